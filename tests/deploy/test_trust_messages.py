"""Trust mismatches are explained in words, with retries on (the default) as well as off,
and a site folder that mixes two federations' files is refused before connecting."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import toy_app

from consortia.cli import main
from consortia.fleet.grpc import GrpcFleet, run_site
from consortia.security.pki import add_site, init_pki


def _other_site(tmp_path: Path) -> Path:
    other = init_pki(tmp_path / "other")
    add_site(other, "site-a")  # the same name, another federation's CA
    return other / "sites" / "site-a"


def test_a_folder_mixing_two_federations_is_refused_in_words(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    other = _other_site(tmp_path)
    for name in ("site.pem", "site.key"):
        (hybrid / name).write_bytes((other / name).read_bytes())
    (hybrid / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    app = f"{Path(toy_app.__file__)}:make_site"
    args = ["client", "--server", "127.0.0.1:1", "--site", "site-a", "--pki", str(hybrid)]
    assert main([*args, "--app", app]) == 2
    err = capsys.readouterr().err
    assert "was not issued by the CA in" in err and "mixes two federations' files" in err
    assert "Traceback" not in err and "InvalidSignature" not in err


def test_with_retries_on_each_failed_attempt_says_why(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = GrpcFleet("127.0.0.1:0", job_id="trust", pki_dir=pki, heartbeat_s=0.5)
    stop = threading.Event()
    site_dir = _other_site(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="consortia.client"):
            t = threading.Thread(
                target=run_site,
                args=(fleet.address, toy_app.make_site("site-a"), site_dir),
                kwargs={"stop": stop, "initial_backoff_s": 0.05, "max_backoff_s": 0.1},
                daemon=True,
            )
            t.start()
            for _ in range(100):  # at most 10 s
                if caplog.text.count("connection to") >= 2:
                    break
                time.sleep(0.1)
            stop.set()
            t.join(5)
    finally:
        fleet.close()
    failures = [r.getMessage() for r in caplog.records if "connection to" in r.getMessage()]
    assert len(failures) >= 2  # it keeps retrying, and says why every time
    assert all("do not trust each other's certificates" in m for m in failures)


def test_a_site_certificate_out_of_its_validity_is_named_before_connecting(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt
    import shutil

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from consortia.security.pki import load_ca

    ca_cert, ca_key = load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-a")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past - dt.timedelta(days=10))
        .not_valid_after(past)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path / "expired"
    shutil.copytree(pki / "sites" / "site-a", folder)
    (folder / "site.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    app = f"{Path(toy_app.__file__)}:make_site"
    args = ["client", "--server", "127.0.0.1:1", "--site", "site-a", "--pki", str(folder)]
    assert main([*args, "--app", app]) == 2
    err = capsys.readouterr().err
    assert f"to {past:%Y-%m-%d}, not now" in err and "--replace" in err


def test_dialling_a_name_the_server_certificate_lacks_is_named(pki: Path) -> None:
    fleet = GrpcFleet("127.0.0.1:0", job_id="names", pki_dir=pki, heartbeat_s=0.5)
    try:
        with pytest.raises(Exception, match="not for the name this site dialled"):
            run_site(
                fleet.address,
                toy_app.make_site("site-a"),
                pki / "sites" / "site-a",
                max_attempts=1,
                server_name="wrong.example",
            )
    finally:
        fleet.close()
