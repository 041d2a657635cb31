"""The federation's public-key infrastructure: one CA, a server certificate, one per site.

Made with ``cryptography`` (never by hand). Keys are ECDSA P-256: gRPC's TLS stack
(BoringSSL) accepts them on every platform, which Ed25519 certificates are not guaranteed
to be. Layout of a PKI folder::

    DIR/ca.pem  DIR/ca.key            federation CA (keep ca.key offline in production)
    DIR/server.pem  DIR/server.key    the server's TLS identity
    DIR/revoked.crl.pem               revocation list signed by the CA; the server reads it
    DIR/issued.json                   every certificate the CA issued: serial, name, dates,
                                      status (so revocation needs no certificate file)
    DIR/sites/NAME/{site.pem, site.key, ca.pem}   all one site needs, handed to that site

The CA folder may stay offline: ``consortia keys revoke`` writes a new signed list there,
which the operator copies to the server's folder (ca.pem, server.pem, server.key and
revoked.crl.pem are all a server needs). Each list carries a CRL number one higher than
the last, and a server never goes back to an older list than the newest it has read.

Private keys are written with mode 0600 from creation on (never world-readable, even
briefly), and existing files are never silently overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
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
REGISTRY = "issued.json"

log = logging.getLogger(__name__)

# Site names end up in file paths, certificate names and logs: keep them boring.
# Matched whole (``fullmatch``): with ``match``, ``$`` also matches before a final newline,
# and "site-a\n" would be a second identity that prints like "site-a".
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
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
    if not isinstance(name, str) or not _SITE_NAME.fullmatch(name):
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
    _write_registry(d, [_entry("server", "consortia server", server_cert)])
    _write_crl(d, ca_cert, ca_key, [], number=1)
    (d / SITES_DIR).mkdir(exist_ok=True)
    return d


# ---- the registry of issued certificates ---------------------------------------------


def _entry(kind: str, name: str, cert: x509.Certificate) -> dict[str, object]:
    return {
        "serial": f"{cert.serial_number:x}",
        "kind": kind,
        "name": name,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "status": "valid",
    }


def _write_registry(d: Path, entries: list[dict[str, object]]) -> None:
    _write_public(d / REGISTRY, (json.dumps(entries, indent=1) + "\n").encode())


def issued(directory: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Every certificate this CA issued (serial in hex, kind, name, dates, status).

    A CA folder made before the registry existed gets one from the certificates still in
    it (a site folder already handed over can then only be revoked by serial)."""
    d = Path(directory)
    try:
        entries = json.loads((d / REGISTRY).read_text())
    except FileNotFoundError:
        entries = []
        for cert_path in sorted((d / SITES_DIR).glob(f"*/{SITE_CERT}")):
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            entries.append(_entry("site", cert_path.parent.name, cert))
    except ValueError as exc:
        raise PkiError(
            f"{d / REGISTRY}: unreadable registry of issued certificates ({exc})"
        ) from None
    if not isinstance(entries, list):
        raise PkiError(f"{d / REGISTRY}: not a list of issued certificates")
    return entries


def site_paths(site_dir: str | os.PathLike[str]) -> SitePaths:
    d = Path(site_dir)
    return SitePaths(d, d / SITE_CERT, d / SITE_KEY, d / CA_CERT)


def add_site(
    directory: str | os.PathLike[str], name: str, valid_days: int = 825, replace: bool = False
) -> SitePaths:
    """Enrol a site: a key and a CA-signed certificate whose CN and SAN are ``name``.

    A name holds one valid certificate at a time. With ``replace`` the site's valid
    certificates are revoked first (by serial, from the registry: the site's folder may
    long be gone) and a new one issued; without it a name that holds one is an error.
    """
    check_site_name(name)
    d = Path(directory)
    ca_cert, ca_key = load_ca(d)
    paths = site_paths(d / SITES_DIR / name)
    holding = [e for e in issued(d) if e["name"] == name and e["status"] == "valid"]
    if (holding or paths.directory.exists()) and not replace:
        serials = ", ".join(str(e["serial"]) for e in holding) or "none recorded"
        raise PkiError(
            f"site {name!r} is already enrolled in {d} (valid certificate serial "
            f"{serials}); pass --replace to revoke it and issue a new one"
        )
    if holding:
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
    _write_registry(d, [*issued(d), _entry("site", name, cert)])
    _write_private_key(paths.key, key)
    _write_public(paths.cert, _pem(cert))
    _write_public(paths.ca_cert, _pem(ca_cert))
    return paths


def _write_crl(
    d: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Sequence[x509.RevokedCertificate],
    number: int,
) -> None:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=3650))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for r in revoked:
        builder = builder.add_revoked_certificate(r)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(d / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The list's CRL number; 0 for a list written before lists were numbered."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def revoke_site(
    directory: str | os.PathLike[str], name: str | None = None, serial: int | None = None
) -> list[int]:
    """Put a site's valid certificates (by name) or one certificate (by serial) on a new
    revocation list, numbered one higher than the last; return the serials revoked.

    Works from the registry alone: neither the site's folder nor its certificate file is
    needed. Revoking what is already revoked changes nothing.
    """
    if (name is None) == (serial is None):
        raise PkiError("name a site or a certificate serial to revoke, not both")
    d = Path(directory)
    ca_cert, ca_key = load_ca(d)
    entries = issued(d)
    if name is not None:
        check_site_name(name)
        chosen = [e for e in entries if e["name"] == name and e["kind"] == "site"]
        if not chosen:
            raise PkiError(f"site {name!r} is not enrolled in {d} (no certificate issued)")
    else:
        chosen = [e for e in entries if int(str(e["serial"]), 16) == serial]
        if not chosen:
            raise PkiError(f"no certificate with serial {serial:x} was issued by {d}")
    crl = load_crl(d, ca_cert) if (d / CRL_FILE).exists() else None
    existing = list(crl) if crl is not None else []
    on_list = {r.serial_number for r in existing}
    new = [int(str(e["serial"]), 16) for e in chosen]
    fresh = [x for x in new if x not in on_list]
    if fresh:
        now = _now()
        added = [
            x509.RevokedCertificateBuilder().serial_number(x).revocation_date(now).build()
            for x in fresh
        ]
        number = (crl_number(crl) if crl is not None else 0) + 1
        _write_crl(d, ca_cert, ca_key, [*existing, *added], number)
    for e in chosen:
        if e["status"] != "revoked":
            e["status"], e["revoked_at"] = "revoked", _now().isoformat()
    _write_registry(d, entries)
    return new


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
    next connection without a restart. A list older than the newest one read (a lower CRL
    number: a copy of an old file, which would un-revoke sites) is refused and logged, and
    the newest list stays in force.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self.number = -1  # the newest CRL number read
        self._refresh()

    def _refresh(self) -> None:
        st = (self._dir / CRL_FILE).stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        crl = load_crl(self._dir)
        self._stamp = stamp
        number = crl_number(crl)
        if number < self.number:
            log.error(
                "refused %s: its CRL number %d is older than %d, the newest read; "
                "the newer list stays in force",
                self._dir / CRL_FILE,
                number,
                self.number,
            )
            return
        self._serials = frozenset(r.serial_number for r in crl)
        self.number = number

    def is_revoked(self, serial: int) -> bool:
        self._refresh()
        return serial in self._serials
