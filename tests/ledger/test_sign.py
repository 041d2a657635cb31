"""Ed25519 through libsodium: the same signatures as cryptography's, and stricter checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from consortia.ledger.sign import (
    ED25519,
    LedgerKey,
    SiteIdentity,
    SiteSigner,
    b64,
    server_signature_ok,
    site_signature_ok,
)


def _identity(public: ed25519.Ed25519PublicKey) -> SiteIdentity:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SiteIdentity(ED25519, b64(der))


def test_libsodium_signs_exactly_what_cryptography_signs(tmp_path: Path) -> None:
    key = LedgerKey.create(tmp_path)
    raw = key._key  # the cryptography key the file holds
    digest = bytes(range(32))
    assert key.sign(digest) == b64(raw.sign(digest))
    site_key = ed25519.Ed25519PrivateKey.generate()
    signer = SiteSigner(site_key)
    assert signer.sign(b"job round digest") == b64(site_key.sign(b"job round digest"))


def test_signatures_made_elsewhere_verify_and_altered_ones_do_not(tmp_path: Path) -> None:
    site_key = ed25519.Ed25519PrivateKey.generate()
    who = _identity(site_key.public_key())
    sig = site_key.sign(b"message")
    assert site_signature_ok(who, b64(sig), b"message")
    assert not site_signature_ok(who, b64(sig), b"messagE")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not site_signature_ok(who, b64(flipped), b"message")
    assert not site_signature_ok(who, b64(sig[:63]), b"message")
    assert not site_signature_ok(who, b64(sig + b"\0"), b"message")
    other = _identity(ed25519.Ed25519PrivateKey.generate().public_key())
    assert not site_signature_ok(other, b64(sig), b"message")

    key = LedgerKey.create(tmp_path)
    digest = "ab" * 32
    good = key.sign(bytes.fromhex(digest))
    assert server_signature_ok(key.public, digest, good)
    assert not server_signature_ok(key.public, "ac" + "ab" * 31, good)
    assert not server_signature_ok(key.public, digest, good[:-4] + "AAA=")
    assert not server_signature_ok(key.public, digest, "not base64!")


@pytest.mark.parametrize("message", [b"update of round 1", b"update of round 2"])
def test_a_small_order_key_forges_nothing(message: bytes) -> None:
    """The identity point as a public key with (R = identity, S = 0) satisfies the
    verification equation for every message; OpenSSL's Ed25519 takes it, libsodium not."""
    identity_point = bytes([1] + [0] * 31)
    weak = ed25519.Ed25519PublicKey.from_public_bytes(identity_point)
    forged = identity_point + bytes(32)
    assert not site_signature_ok(_identity(weak), b64(forged), message)
    assert not server_signature_ok(b64(identity_point), "00" * 32, b64(forged))
