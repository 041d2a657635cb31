"""The federation PKI: file layout, key modes, what each certificate names, revocation."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from consortia.cli import keys as keys_cli
from consortia.security.pki import (
    CRL_FILE,
    PkiError,
    RevocationWatcher,
    add_site,
    crl_number,
    init_pki,
    issued,
    load_crl,
    revoke_site,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    return init_pki(tmp_path / "pki", hosts=["fl.example.org", "10.1.2.3"])


def test_init_writes_ca_server_and_empty_crl_with_private_keys_0600(pki: Path) -> None:
    for name in ("ca.key", "server.key"):
        assert _mode(pki / name) == 0o600
    assert _mode(pki / "ca.pem") == 0o644
    ca, server = _cert(pki / "ca.pem"), _cert(pki / "server.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.public_key().curve.name == "secp256r1"
    assert server.issuer == ca.subject
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    ]
    assert len(list(load_crl(pki))) == 0


def test_key_mode_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        d = init_pki(tmp_path / "p")
        site = add_site(d, "a")
    finally:
        os.umask(old)
    assert _mode(d / "ca.key") == 0o600
    assert _mode(site.key) == 0o600


def test_init_refuses_to_overwrite_a_ca(pki: Path) -> None:
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(PkiError, match="already holds a CA"):
        init_pki(pki)
    assert (pki / "ca.key").read_bytes() == before


def test_add_site_folder_holds_everything_the_site_needs(pki: Path) -> None:
    site = add_site(pki, "hospital-a")
    assert site.directory == pki / "sites" / "hospital-a"
    assert sorted(p.name for p in site.directory.iterdir()) == ["ca.pem", "site.key", "site.pem"]
    assert _mode(site.key) == 0o600
    assert site.ca_cert.read_bytes() == (pki / "ca.pem").read_bytes()
    cert = _cert(site.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hospital-a"]
    # Signed by the CA: verification raises if not.
    cert.verify_directly_issued_by(_cert(pki / "ca.pem"))


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "-lead", "x" * 64, "é"])
def test_add_site_rejects_unsafe_names(pki: Path, bad: str) -> None:
    with pytest.raises(PkiError, match="invalid site name"):
        add_site(pki, bad)


def test_add_site_twice_is_refused_unless_replaced_which_revokes_the_old(pki: Path) -> None:
    first = _cert(add_site(pki, "b").cert)
    with pytest.raises(PkiError, match="already enrolled"):
        add_site(pki, "b")
    second = _cert(add_site(pki, "b", replace=True).cert)
    assert second.serial_number != first.serial_number
    revoked = {r.serial_number for r in load_crl(pki)}
    assert revoked == {first.serial_number}


def test_revoke_adds_the_serial_to_a_ca_signed_crl_once(pki: Path) -> None:
    cert = _cert(add_site(pki, "c").cert)
    add_site(pki, "d")
    watcher = RevocationWatcher(pki)
    assert not watcher.is_revoked(cert.serial_number)
    assert revoke_site(pki, "c") == [cert.serial_number]
    assert revoke_site(pki, "c") == [cert.serial_number]  # idempotent
    assert [r.serial_number for r in load_crl(pki)] == [cert.serial_number]
    assert watcher.is_revoked(cert.serial_number)  # re-read after the file changed


def test_revoking_an_unknown_site_is_a_clear_error(pki: Path) -> None:
    with pytest.raises(PkiError, match="not enrolled"):
        revoke_site(pki, "ghost")


def test_crl_signed_by_another_ca_is_rejected(pki: Path, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    (pki / CRL_FILE).write_bytes((other / CRL_FILE).read_bytes())
    with pytest.raises(PkiError, match="not signed by the federation CA"):
        load_crl(pki)


def test_missing_pki_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="consortia keys init"):
        add_site(tmp_path / "nowhere", "a")


def test_cli_init_add_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    keys_cli.register(parser.add_subparsers(dest="command", required=True))
    d = tmp_path / "pki"
    for argv in (
        ["keys", "init", str(d), "--host", "fl.example.org"],
        ["keys", "add-site", str(d), "hospital-a"],
        ["keys", "revoke", str(d), "hospital-a"],
    ):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "enrolled" in out and "revoked" in out
    serial = _cert(d / "sites" / "hospital-a" / "site.pem").serial_number
    assert [r.serial_number for r in load_crl(d)] == [serial]


# ---- issue 8: revocation without the site's files, numbered lists, exact names ------------


@pytest.mark.parametrize("name", ["site-a\n", "site-a\r\n", "\nsite-a"])
def test_a_name_with_a_newline_is_not_a_second_identity(pki: Path, name: str) -> None:
    with pytest.raises(PkiError, match="invalid site name"):
        add_site(pki, name)


def test_revoke_by_name_or_serial_after_the_site_folder_was_handed_over(pki: Path) -> None:
    a = _cert(add_site(pki, "a").cert)
    b = _cert(add_site(pki, "b").cert)
    for name in ("a", "b"):
        for p in (pki / "sites" / name).iterdir():
            p.unlink()
        (pki / "sites" / name).rmdir()
    assert revoke_site(pki, "a") == [a.serial_number]
    assert revoke_site(pki, serial=b.serial_number) == [b.serial_number]
    assert {r.serial_number for r in load_crl(pki)} == {a.serial_number, b.serial_number}
    status = {e["name"]: e["status"] for e in issued(pki)}
    assert status == {"consortia server": "valid", "a": "revoked", "b": "revoked"}
    with pytest.raises(PkiError, match="no certificate with serial"):
        revoke_site(pki, serial=12345)


def test_reissuing_a_name_revokes_its_old_certificate_even_with_the_folder_gone(
    pki: Path,
) -> None:
    old = _cert(add_site(pki, "a").cert)
    for p in (pki / "sites" / "a").iterdir():
        p.unlink()
    (pki / "sites" / "a").rmdir()
    with pytest.raises(PkiError, match=f"already enrolled.*{old.serial_number:x}"):
        add_site(pki, "a")  # a second valid certificate for the name: refused
    new = _cert(add_site(pki, "a", replace=True).cert)
    assert {r.serial_number for r in load_crl(pki)} == {old.serial_number}
    valid = [e["serial"] for e in issued(pki) if e["name"] == "a" and e["status"] == "valid"]
    assert valid == [f"{new.serial_number:x}"]


def test_each_list_is_numbered_and_an_older_one_is_refused(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = _cert(add_site(pki, "a").cert)
    b = _cert(add_site(pki, "b").cert)
    first = (pki / CRL_FILE).read_bytes()
    assert crl_number(load_crl(pki)) == 1
    revoke_site(pki, "a")
    revoke_site(pki, "b")
    assert crl_number(load_crl(pki)) == 3
    watcher = RevocationWatcher(pki)
    assert watcher.is_revoked(a.serial_number) and watcher.is_revoked(b.serial_number)
    (pki / CRL_FILE).write_bytes(first)  # a replayed old list would un-revoke both
    with caplog.at_level("ERROR"):
        assert watcher.is_revoked(a.serial_number) and watcher.is_revoked(b.serial_number)
    assert "CRL number 1 is older than 3" in caplog.text


def test_cli_lists_certificates_and_revokes_by_serial(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    keys_cli.register(parser.add_subparsers(dest="command", required=True))
    serial = _cert(add_site(pki, "lab-1").cert).serial_number
    for argv in (
        ["keys", "revoke", str(pki), "--serial", f"{serial:x}"],
        ["keys", "list", str(pki)],
    ):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"{serial:x}  site   lab-1" in out and "revoked" in out
    args = parser.parse_args(["keys", "revoke", str(pki)])
    assert args.func(args) == 2  # neither a name nor a serial
