"""AES-GCM encryption of share bundles sent from one site to another through the server.

The server relays every share bundle, so it must learn nothing from them and must not be able
to redirect one. The key is the pair's ``cipher`` secret (``keys.pair_secret``), which the
server cannot derive; the associated data names the sender, the receiver, the job and the
round, so a bundle sealed from a to b in round r does not open as from a to c, as from b to
a, or in round r + 1: a replayed or re-routed bundle fails authentication like a forged one.
A fresh random 96-bit nonce per bundle (prepended to the ciphertext) is safe: a pair key
seals only the one or two bundles of its round.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from consortia.secagg.context import RoundContext, SecAggError, check_site_id

NONCE_BYTES = 12
TAG_BYTES = 16
MAX_BUNDLE_BYTES = 1 << 20  # a bundle holds two 35-byte shares and ids: far below this


def _associated_data(sender: int, receiver: int, context: RoundContext) -> bytes:
    sender, receiver = check_site_id(sender, "sender"), check_site_id(receiver, "receiver")
    if sender == receiver:
        raise SecAggError(f"site {sender} cannot send a share bundle to itself")
    return context.label("share-bundle", sender, receiver)


def _cipher(key: bytes) -> AESGCM:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise SecAggError("a share-bundle key must be 32 bytes")
    return AESGCM(bytes(key))


def seal(key: bytes, plaintext: bytes, sender: int, receiver: int, context: RoundContext) -> bytes:
    """nonce || AES-256-GCM(plaintext), bound to (sender, receiver, job, round)."""
    if len(plaintext) > MAX_BUNDLE_BYTES:
        raise SecAggError(f"share bundle of {len(plaintext)} bytes exceeds {MAX_BUNDLE_BYTES}")
    nonce = os.urandom(NONCE_BYTES)
    ad = _associated_data(sender, receiver, context)
    return nonce + _cipher(key).encrypt(nonce, bytes(plaintext), ad)


def open_sealed(
    key: bytes, sealed: bytes, sender: int, receiver: int, context: RoundContext
) -> bytes:
    """The plaintext, or ``SecAggError`` if the bundle is malformed, forged or misrouted."""
    if not isinstance(sealed, (bytes, bytearray)):
        raise SecAggError(f"sealed bundle must be bytes, got {type(sealed).__name__}")
    if not NONCE_BYTES + TAG_BYTES <= len(sealed) <= NONCE_BYTES + TAG_BYTES + MAX_BUNDLE_BYTES:
        raise SecAggError(f"sealed bundle from site {sender} has invalid length {len(sealed)}")
    ad = _associated_data(sender, receiver, context)
    try:
        return _cipher(key).decrypt(bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), ad)
    except InvalidTag:
        raise SecAggError(
            f"share bundle from site {sender} to site {receiver} fails authentication "
            f"(forged, or sealed for another pair or round)"
        ) from None
