"""Keys and signatures: the server's Ed25519 ledger key, and the sites' update signatures.

The server signs every entry's hash with an Ed25519 key made when the job is created
(``ledger.key``, mode 0600, in the run folder; ``ledger.pub`` next to it and the public
key in entry 0). A site signs ``(job, round, digest of its update)``: in a deployment
with its certificate's ECDSA P-256 key, so that the server checks it against the very
certificate the TLS handshake authenticated (no second key to enrol or lose); in
simulation each virtual site gets an Ed25519 key made for the run (there is no
certificate to bind a key to, and Ed25519 signs faster).

Ed25519 signing and verification go through libsodium (PyNaCl), keys are made, stored
and parsed with ``cryptography``. Why: verification is what bounds ``audit verify`` (one
site signature per update) and the server's check of each update, and libsodium verifies
about 2.5x faster than cryptography's OpenSSL path on this project's machines (16,400
against 6,600 a second on one core) and signs about 1.9x faster. Ed25519 is
deterministic, so either library makes the same signature of the same key and message;
libsodium refuses some non-canonical encodings and small-order keys that OpenSSL takes,
and the server and the auditor both check with it, so they never disagree.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from consortia.core.spec import byte_view
from consortia.ledger.chain import MAX_SAFE_INT, LedgerError, json_text

KEY_FILE = "ledger.key"
PUBLIC_FILE = "ledger.pub"
ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"
KEY_TYPES = (ED25519, ECDSA_P256)
MAX_SIGNATURE_CHARS = 128  # base64 of a DER ECDSA P-256 signature (<= 72 bytes) fits

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise LedgerError(f"{what} is not base64") from None


def _write_private(path: Path, key: PrivateKey) -> None:
    """Mode 0600 from the first byte, never overwriting (O_EXCL)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_private(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise LedgerError(f"{path} is missing: the key that signs this ledger") from None
    except (ValueError, TypeError) as exc:
        raise LedgerError(f"{path}: not a private key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
        raise LedgerError(f"{path}: an EC key must be on P-256, got {key.curve.name}")
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise LedgerError(f"{path}: Ed25519 or ECDSA P-256 keys only")
    return key


# ---- the server's ledger key ---------------------------------------------------------


class LedgerKey:
    """The Ed25519 key that signs every entry of one job's ledger."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self._signing = _signing_key(key)
        self.public = b64(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @staticmethod
    def create(folder: Path) -> LedgerKey:
        """A new key: private in ``ledger.key`` (0600), public in ``ledger.pub``."""
        key = ed25519.Ed25519PrivateKey.generate()
        _write_private(folder / KEY_FILE, key)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (folder / PUBLIC_FILE).write_bytes(pub)
        return LedgerKey(key)

    @staticmethod
    def load(folder: Path) -> LedgerKey:
        key = _read_private(folder / KEY_FILE)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise LedgerError(f"{folder / KEY_FILE}: the ledger key is an Ed25519 key")
        return LedgerKey(key)

    def sign(self, digest: bytes) -> str:
        return b64(self._signing.sign(digest).signature)


def read_public_file(folder: Path) -> str | None:
    """The raw public key (base64) in ``ledger.pub``, None if there is no such file."""
    path = folder / PUBLIC_FILE
    if not path.is_file():
        return None
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise LedgerError(f"{path}: not a public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise LedgerError(f"{path}: not an Ed25519 public key")
    return b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _signing_key(key: ed25519.Ed25519PrivateKey) -> SigningKey:
    """The same key for libsodium (its 32-byte seed)."""
    return SigningKey(
        key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )


def _ed25519_ok(key: VerifyKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        key.verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=64)
def _server_key(public: str) -> VerifyKey:
    raw = unb64(public, "the ledger's public key")
    try:
        return VerifyKey(raw)
    except (CryptoError, ValueError, TypeError):
        raise LedgerError("the ledger's public key is not an Ed25519 key") from None


def server_signature_ok(public: str, digest_hex: str, signature: str) -> bool:
    """Whether ``signature`` (base64) is the ledger key's over the hash ``digest_hex``."""
    try:
        return _ed25519_ok(
            _server_key(public), unb64(signature, "signature"), bytes.fromhex(digest_hex)
        )
    except (LedgerError, ValueError):
        return False


# ---- what a site signs ---------------------------------------------------------------


def update_digest(vector: np.ndarray) -> str:
    """SHA-256 of an update as sent: its dtype and length, then its bytes (little-endian).

    The header makes the same bytes under another dtype a different update."""
    arr = np.ascontiguousarray(vector)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{arr.dtype.str.lstrip('<|=')}:{arr.size}:".encode())
    h.update(byte_view(arr))
    return h.hexdigest()


def update_message(job: str, round_: int, digest: str) -> bytes:
    """The bytes a site signs: canonical JSON of the job id, the round and the digest.

    Written out rather than through ``canonical_json`` (the same text, its keys in sorted
    order): ``audit verify`` builds one per update, and the generic path was a fifth of
    its time. A test holds the two to the same bytes."""
    number = operator.index(round_)
    if not -MAX_SAFE_INT <= number <= MAX_SAFE_INT:
        raise LedgerError(f"payload.round: integer {number} is beyond +-2**53")
    job_text, digest_text = json_text(job), json_text(digest)
    return f'{{"job":{job_text},"round":{number},"update_sha256":{digest_text}}}'.encode()


@dataclass(frozen=True)
class SiteIdentity:
    """How to check a site's signatures: its key type and public key (base64 DER
    SubjectPublicKeyInfo), and, in a deployment, its certificate's serial (hex)."""

    key_type: str
    public_key: str
    certificate_serial: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_type": self.key_type,
            "public_key": self.public_key,
            "certificate_serial": self.certificate_serial,
        }


class SiteSigner:
    """A site's signing key: its certificate's P-256 key, or a run's Ed25519 key."""

    def __init__(self, key: PrivateKey, certificate_serial: str | None = None) -> None:
        self._key = key
        self._signing = _signing_key(key) if isinstance(key, ed25519.Ed25519PrivateKey) else None
        self.key_type = ED25519 if isinstance(key, ed25519.Ed25519PrivateKey) else ECDSA_P256
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.identity = SiteIdentity(self.key_type, b64(der), certificate_serial)

    @staticmethod
    def generate() -> SiteSigner:
        return SiteSigner(ed25519.Ed25519PrivateKey.generate())

    @staticmethod
    def load(path: Path, certificate_serial: str | None = None) -> SiteSigner:
        return SiteSigner(_read_private(path), certificate_serial)

    def save(self, path: Path) -> None:
        _write_private(path, self._key)

    def sign(self, message: bytes) -> str:
        if self._signing is not None:
            return b64(self._signing.sign(message).signature)
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        return b64(self._key.sign(message, ec.ECDSA(hashes.SHA256())))

    # Pickled into pool workers as the key's PEM (cryptography keys do not pickle).
    def __getstate__(self) -> dict[str, Any]:
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {"pem": pem, "serial": self.identity.certificate_serial}

    def __setstate__(self, state: dict[str, Any]) -> None:
        key = serialization.load_pem_private_key(state["pem"], password=None)
        assert isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey))
        self.__init__(key, state["serial"])  # type: ignore[misc]


@functools.lru_cache(maxsize=4096)
def _site_key(key_type: str, public_key: str) -> Any:
    try:
        key = serialization.load_der_public_key(unb64(public_key, "a site's public key"))
    except ValueError:
        raise LedgerError("a site's public key is not a DER public key") from None
    if key_type == ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        try:
            return VerifyKey(raw)
        except (CryptoError, ValueError):
            raise LedgerError("a site's public key is not a usable Ed25519 key") from None
    if (
        key_type == ECDSA_P256
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise LedgerError(f"a site's public key is not a {key_type} key")


def site_signature_ok(identity: SiteIdentity, signature: str, message: bytes) -> bool:
    """Whether ``signature`` (base64) is the site's over ``message``."""
    if not signature or len(signature) > MAX_SIGNATURE_CHARS:
        return False
    try:
        key = _site_key(identity.key_type, identity.public_key)
        raw = unb64(signature, "signature")
        if identity.key_type == ED25519:
            return _ed25519_ok(key, raw, message)
        key.verify(raw, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, LedgerError, ValueError):
        return False
    return True


def identity_from_certificate(pem: bytes) -> SiteIdentity:
    """A deployed site's identity: its certificate's P-256 public key and serial."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise LedgerError("a site certificate's key must be ECDSA P-256 (as enrolled)")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SiteIdentity(ECDSA_P256, b64(der), f"{cert.serial_number:x}")
