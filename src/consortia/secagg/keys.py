"""Pairwise secrets from X25519 key agreement, expanded by HKDF-SHA256.

Each site publishes two X25519 public keys per round (through the server): one to agree
the pairwise *mask* seeds, one to agree the keys that encrypt share bundles between two
sites. Two sites derive the same 32-byte value from their own private key and the other's
public key; the server, which relays only public keys, cannot (computational Diffie-Hellman
on Curve25519). HKDF binds the value to its purpose, the job, the round and the unordered
pair, so a seed agreed for one use is unrelated to every other one.

The mask private key is the one Shamir-shared among neighbours: if a site drops out after
its masked input is sent, t neighbours' shares rebuild that key and, with the survivors'
public keys, the pairwise seeds that cancel its masks.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consortia.secagg.context import RoundContext, SecAggError, check_site_id

KEY_BYTES = 32
PURPOSES = ("mask", "cipher")


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``public`` is the raw 32 bytes a site publishes."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        private = X25519PrivateKey.generate()
        return cls(private, private.public_key().public_bytes_raw())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 private bytes (e.g. after Shamir reconstruction)."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
            raise SecAggError(f"an X25519 private key is {KEY_BYTES} bytes")
        private = X25519PrivateKey.from_private_bytes(bytes(raw))
        return cls(private, private.public_key().public_bytes_raw())

    def private_bytes(self) -> bytes:
        """The 32 private bytes: what is Shamir-shared for the mask key."""
        return self.private.private_bytes_raw()


def load_public(raw: bytes, owner: int) -> X25519PublicKey:
    """Parse a peer's public key from untrusted bytes, naming the site it came from."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
        raise SecAggError(f"site {owner}'s public key must be {KEY_BYTES} bytes")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def pair_secret(
    own: X25519PrivateKey,
    own_id: int,
    peer_public: bytes,
    peer_id: int,
    context: RoundContext,
    purpose: str,
) -> bytes:
    """The 32-byte secret sites ``own_id`` and ``peer_id`` share for ``purpose`` this round.

    Symmetric in the pair: both ends compute the same bytes. A low-order peer key (whose
    shared value is all zeros, so known to anyone) is refused.
    """
    own_id, peer_id = check_site_id(own_id), check_site_id(peer_id, "peer id")
    if own_id == peer_id:
        raise SecAggError(f"site {own_id} cannot agree a pair secret with itself")
    if purpose not in PURPOSES:
        raise SecAggError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    try:
        shared = own.exchange(load_public(peer_public, peer_id))
    except ValueError as exc:  # cryptography refuses an all-zero shared secret
        raise SecAggError(f"site {peer_id}'s public key is degenerate: {exc}") from None
    low, high = sorted((own_id, peer_id))
    info = context.label(f"pair-{purpose}", low, high)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)
