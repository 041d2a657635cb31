"""Job signing: an Ed25519 "job signer" key vouches for a job file's exact bytes.

A site that trusts a signer (its public key in the site's policy) accepts any job that
signer signed, without listing every job digest. The signature is over the 32 bytes of
the job file's SHA-256 digest, so a signed job file cannot change by one byte and keep
its signature. Keys are kept in plain files: the private key as PKCS#8 PEM (0600), the
public key as one line of base64 (the raw 32 bytes), short enough to paste into a policy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consortia.core.errors import ConfigError

SIGNATURE_SUFFIX = ".sig"


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def signature_path(job_path: Path) -> Path:
    """Where a job file's signature lives: ``JOB.sig`` next to it (job.toml.sig)."""
    return job_path.with_name(job_path.name + SIGNATURE_SUFFIX)


def new_signer(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` (base64 public key) to
    ``directory``; refuses to overwrite an existing key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} exists; a signer key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_text(public_key_text(key.public_key()) + "\n")
    return key_path, pub_path


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_signer(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"--key {path}: cannot read ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"--key {path}: a {type(key).__name__}, not an Ed25519 job signer key "
            "(`consortia keys new-signer` makes one)"
        )
    return key


def sign_job(job_path: Path, key_path: Path) -> Path:
    """Sign the job file's digest; write the base64 signature to ``JOB.sig``."""
    key = load_signer(key_path)
    digest = bytes.fromhex(file_digest(job_path))
    out = signature_path(Path(job_path))
    out.write_text(base64.b64encode(key.sign(digest)).decode() + "\n")
    return out


def read_signature(job_path: Path) -> str | None:
    """The job's signature (base64) if ``JOB.sig`` exists, checked for shape only."""
    path = signature_path(Path(job_path))
    if not path.is_file():
        return None
    text = path.read_text().strip()
    _b64(text, 64, str(path))
    return text


def parse_public_key(text: str, where: str = "public key") -> Ed25519PublicKey:
    """A signer's public key from its base64 text (raises ValueError naming ``where``)."""
    return Ed25519PublicKey.from_public_bytes(_b64(text, 32, where, ValueError))


def _b64(text: str, size: int, where: str, error: type[Exception] = ConfigError) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{where}: not base64") from None
    if len(raw) != size:
        raise error(f"{where}: {len(raw)} bytes, an Ed25519 key or signature has {size}")
    return raw


def signed_by(digest_hex: str, signature: str | None, signers: list[str]) -> str | None:
    """The first of ``signers`` (base64 public keys) whose signature over ``digest_hex``
    ``signature`` is; None when it is no one's (or missing, or malformed)."""
    if not signature:
        return None
    try:
        sig = base64.b64decode(signature, validate=True)
        digest = bytes.fromhex(digest_hex)
    except (binascii.Error, ValueError):
        return None
    for text in signers:
        try:
            parse_public_key(text).verify(sig, digest)
        except (InvalidSignature, ValueError):
            continue
        return text
    return None
