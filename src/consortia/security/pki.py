"""The federation's public-key infrastructure: one CA, a server certificate, one per site.

Made with ``cryptography`` (never by hand). Keys are ECDSA P-256: gRPC's TLS stack
(BoringSSL) accepts them on every platform, which Ed25519 certificates are not guaranteed
to be. Layout of a PKI folder::

    DIR/ca.pem  DIR/ca.key            federation CA (keep ca.key offline in production)
    DIR/server.pem  DIR/server.key    the server's TLS identity
    DIR/revoked.crl.pem               revocation list signed by the CA; the server reads it
    DIR/sites/NAME/{site.pem, site.key, ca.pem}   all one site needs, handed to that site

Private keys are written with mode 0600 from creation on (never world-readable, even
briefly), and existing files are never silently overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortia.core.errors import ConsortiaError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CRL_FILE = "revoked.crl.pem"
SITES_DIR = "sites"
SITE_CERT = "site.pem"
SITE_KEY = "site.key"

# Site names end up in file paths, certificate names and logs: keep them boring.
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class PkiError(ConsortiaError):
    """A PKI folder is missing, incomplete or would be overwritten."""


@dataclass(frozen=True)
class SitePaths:
    """The files a site needs to connect; ``directory`` is what the site operator receives."""

    directory: Path
    cert: Path
    key: Path
    ca_cert: Path


def check_site_name(name: str) -> str:
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise PkiError(
            f"invalid site name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Create ``path`` with mode 0600 atomically from the start (O_EXCL: never overwrite)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # gRPC cannot read encrypted keys
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only remove bits; make the mode exact
        os.write(fd, pem)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):  # de-duplicate, keep order
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _issue(
    subject_cn: str,
    public_key: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    san: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    valid_days: int,
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def load_ca(
    directory: str | os.PathLike[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(
            f"{d}: not a PKI folder (missing {Path(exc.filename).name}); "
            "run `consortia keys init` first"
        ) from exc
    except ValueError as exc:
        raise PkiError(f"{d}: unreadable CA certificate or key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{d / CA_KEY}: expected an ECDSA key")
    return cert, key


def init_pki(
    directory: str | os.PathLike[str], hosts: Sequence[str] = (), valid_days: int = 825
) -> Path:
    """Create the federation CA, the server key/certificate and an empty revocation list.

    The server certificate names localhost, 127.0.0.1 and ::1 plus every ``hosts`` entry
    (IP addresses become IP SANs, anything else a DNS SAN) so that sites can verify it.
    """
    d = Path(directory)
    if (d / CA_KEY).exists() or (d / CA_CERT).exists():
        raise PkiError(f"{d} already holds a CA; refusing to overwrite it")
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    now = _now()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "consortia federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days * 2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private_key(d / CA_KEY, ca_key)
    _write_public(d / CA_CERT, _pem(ca_cert))

    server_key = _new_key()
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    server_cert = _issue(
        "consortia server",
        server_key.public_key(),
        ca_cert,
        ca_key,
        _san(all_hosts),
        ExtendedKeyUsageOID.SERVER_AUTH,
        valid_days,
    )
    _write_private_key(d / SERVER_KEY, server_key)
    _write_public(d / SERVER_CERT, _pem(server_cert))
    _write_crl(d, ca_cert, ca_key, [])
    (d / SITES_DIR).mkdir(exist_ok=True)
    return d


def site_paths(site_dir: str | os.PathLike[str]) -> SitePaths:
    d = Path(site_dir)
    return SitePaths(d, d / SITE_CERT, d / SITE_KEY, d / CA_CERT)


def add_site(
    directory: str | os.PathLike[str], name: str, valid_days: int = 825, replace: bool = False
) -> SitePaths:
    """Enrol a site: a key and a CA-signed certificate whose CN and SAN are ``name``.

    With ``replace`` an existing site's certificate is revoked first and a new one issued
    (a lost or leaked key); without it an existing site is an error, never overwritten.
    """
    check_site_name(name)
    d = Path(directory)
    ca_cert, ca_key = load_ca(d)
    paths = site_paths(d / SITES_DIR / name)
    if paths.directory.exists():
        if not replace:
            raise PkiError(
                f"site {name!r} is already enrolled in {d}; "
                "pass --replace to revoke its certificate and issue a new one"
            )
        if paths.cert.exists():
            revoke_site(d, name)
        for p in (paths.cert, paths.key, paths.ca_cert):
            p.unlink(missing_ok=True)
    paths.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.directory, 0o700)
    key = _new_key()
    cert = _issue(
        name,
        key.public_key(),
        ca_cert,
        ca_key,
        x509.SubjectAlternativeName([x509.DNSName(name)]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        valid_days,
    )
    _write_private_key(paths.key, key)
    _write_public(paths.cert, _pem(cert))
    _write_public(paths.ca_cert, _pem(ca_cert))
    return paths


def _write_crl(
    d: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Sequence[x509.RevokedCertificate],
) -> None:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=3650))
    )
    for r in revoked:
        builder = builder.add_revoked_certificate(r)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(d / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))


def revoke_site(directory: str | os.PathLike[str], name: str) -> int:
    """Add the site's current certificate to the CA-signed revocation list; return its serial."""
    check_site_name(name)
    d = Path(directory)
    ca_cert, ca_key = load_ca(d)
    cert_path = site_paths(d / SITES_DIR / name).cert
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"site {name!r} is not enrolled in {d} (no {cert_path})") from exc
    existing = list(load_crl(d, ca_cert)) if (d / CRL_FILE).exists() else []
    if any(r.serial_number == cert.serial_number for r in existing):
        return cert.serial_number
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(_now())
        .build()
    )
    _write_crl(d, ca_cert, ca_key, [*existing, entry])
    return cert.serial_number


def load_crl(
    directory: str | os.PathLike[str], ca_cert: x509.Certificate | None = None
) -> x509.CertificateRevocationList:
    """Read the revocation list and check the CA signed it (a forged list is an error)."""
    d = Path(directory)
    if ca_cert is None:
        try:
            ca_cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        except FileNotFoundError as exc:
            raise PkiError(f"{d}: missing {CA_CERT}") from exc
    try:
        crl = x509.load_pem_x509_crl((d / CRL_FILE).read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"{d}: missing revocation list {CRL_FILE}") from exc
    except ValueError as exc:
        raise PkiError(f"{d / CRL_FILE}: malformed revocation list ({exc})") from exc
    pub = ca_cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(pub):
        raise PkiError(f"{d / CRL_FILE}: not signed by the federation CA")
    return crl


def revoked_serials(directory: str | os.PathLike[str]) -> frozenset[int]:
    return frozenset(r.serial_number for r in load_crl(directory))


class RevocationWatcher:
    """Answers "is this serial revoked?", re-reading the list whenever its file changes.

    The server keeps one for its lifetime, so ``consortia keys revoke`` takes effect for the
    next connection without a restart.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._refresh()

    def _refresh(self) -> None:
        st = (self._dir / CRL_FILE).stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._serials = revoked_serials(self._dir)
            self._stamp = stamp

    def is_revoked(self, serial: int) -> bool:
        self._refresh()
        return serial in self._serials
