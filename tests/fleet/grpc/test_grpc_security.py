"""Who may connect: only certificates from the federation CA that are not revoked."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_site_helpers import SiteStarter, make_site

from consortia.core.messages import FitIns, TrainSettings
from consortia.fleet.base import Failure, Reply, Timing
from consortia.fleet.grpc import GrpcFleet, SiteConnectionError, codec, run_site
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.client import connect_method
from consortia.security.pki import add_site, init_pki, revoke_site

V = codec.PROTOCOL_VERSION


def test_certificate_from_another_ca_is_refused(fleet: GrpcFleet, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    add_site(other, "site-a")  # same name, wrong CA
    with pytest.raises(SiteConnectionError, match="after 2 attempt"):
        run_site(
            fleet.address,
            make_site("site-a"),
            other / "sites" / "site-a",
            max_attempts=2,
            initial_backoff_s=0.01,
        )
    assert fleet.sites() == []


def test_client_without_a_certificate_is_refused(fleet: GrpcFleet, pki: Path) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with grpc.secure_channel(fleet.address, creds) as ch:
        call = connect_method(ch, pb.SiteMessage.SerializeToString)(
            iter([pb.SiteMessage(hello=pb.Hello(site_name="site-a", protocol_version=V))]),
            timeout=3,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(call)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert fleet.sites() == []


def test_revoked_site_is_refused_without_a_server_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = init_pki(tmp_path / "pki")
    add_site(d, "site-a")
    f = GrpcFleet("127.0.0.1:0", job_id="j", pki_dir=d, heartbeat_s=0.5)
    try:
        revoke_site(d, "site-a")  # after the server started
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(
                SiteConnectionError,
                match=r"certificate of site 'site-a' \(serial [0-9a-f]+\) is revoked",
            ),
        ):
            run_site(f.address, make_site("site-a"), d / "sites" / "site-a", max_attempts=5)
        assert "connection refused: certificate of site 'site-a'" in caplog.text
        assert f.sites() == []
    finally:
        f.close()


def test_identity_comes_from_the_certificate_not_from_what_the_site_claims(
    fleet: GrpcFleet, pki: Path
) -> None:
    impostor = make_site("site-b")  # the application says site-b, the certificate site-a
    with pytest.raises(SiteConnectionError, match="claims to be 'site-b' but its certificate"):
        run_site(fleet.address, impostor, pki / "sites" / "site-a", max_attempts=1)
    assert fleet.sites() == []


_KILLABLE_SITE = """
import sys, time
sys.path.insert(0, {tests!r})
from grpc_site_helpers import AddTrainer, make_site
from consortia.fleet.grpc import run_site
run_site({address!r}, make_site("site-a", trainer=AddTrainer(sleep_s=60)), {site_dir!r},
         heartbeat_s=0.5)
"""


@pytest.mark.parametrize(
    ("sig", "why", "size", "after_s"),
    [
        (signal.SIGKILL, "disconnected", 3, 0.5),
        (signal.SIGSTOP, "heartbeat lost", 3, 0.5),
        (signal.SIGSTOP, "heartbeat lost", 2**24, 0.05),  # 64 MiB: frozen mid-download
    ],
    ids=["killed", "frozen", "frozen-mid-download"],
)
def test_site_process_killed_or_frozen_mid_phase_fails_fast_and_others_answer(
    fleet: GrpcFleet,
    start_site: SiteStarter,
    pki: Path,
    sig: signal.Signals,
    why: str,
    size: int,
    after_s: float,
) -> None:
    """A killed process closes its socket; a frozen one keeps it open but stops beating
    (and, mid-download, stops reading, which blocks the server's send on flow control)."""
    code = _KILLABLE_SITE.format(
        tests=str(Path(__file__).parent),
        address=fleet.address,
        site_dir=str(pki / "sites" / "site-a"),
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
    try:
        start_site(fleet, make_site("site-b"))
        fleet.wait_for_sites(2, timeout=15)
        w = np.zeros(size, np.float32)
        t0 = time.monotonic()
        outcomes = fleet.send(
            [
                ("site-a", FitIns(1, w, TrainSettings(), 0)),
                ("site-b", FitIns(1, w, TrainSettings(), 0)),
            ],
            Timing(30),
        )
        time.sleep(after_s)  # site-a is now downloading or training
        proc.send_signal(sig)
        out = list(outcomes)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(5)
    assert isinstance(out[0], Failure) and out[0].site == "site-a"
    assert "round 1 fit" in out[0].reason and why in out[0].reason, out[0].reason
    assert isinstance(out[1], Reply)
    assert elapsed < 5, f"a dead site stalled the phase for {elapsed:.1f} s"
    assert fleet.sites() == ["site-b"]


def test_revoking_a_connected_site_disconnects_it_and_keeps_it_out(tmp_path: Path) -> None:
    d = init_pki(tmp_path / "pki")
    add_site(d, "site-a")
    f = GrpcFleet("127.0.0.1:0", job_id="j", pki_dir=d, heartbeat_s=0.2)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            run_site(
                f.address,
                make_site("site-a"),
                d / "sites" / "site-a",
                heartbeat_s=0.2,
                initial_backoff_s=0.05,
            )
        except SiteConnectionError as exc:
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    try:
        f.wait_for_sites(1, timeout=5)
        revoke_site(d, "site-a")
        t.join(5)  # kicked out within a heartbeat, then refused on reconnect: run_site ends
        assert not t.is_alive()
        assert len(errors) == 1 and "is revoked" in str(errors[0])
        assert f.sites() == []
        fit = FitIns(1, np.zeros(1, np.float32), TrainSettings(), 0)
        (out,) = f.send([("site-a", fit)], Timing(1))
        assert out == Failure("site-a", "not connected")
    finally:
        f.close()


def test_unreadable_revocation_list_fails_closed(tmp_path: Path) -> None:
    d = init_pki(tmp_path / "pki")
    add_site(d, "site-a")
    f = GrpcFleet("127.0.0.1:0", job_id="j", pki_dir=d, heartbeat_s=0.5)
    try:
        (d / "revoked.crl.pem").write_text("not a CRL")
        with pytest.raises(SiteConnectionError, match="is revoked"):
            run_site(f.address, make_site("site-a"), d / "sites" / "site-a", max_attempts=1)
    finally:
        f.close()


def test_an_offline_ca_revokes_through_a_copied_list_and_an_older_list_cannot_undo_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's folder holds no CA key; the operator revokes in the CA's folder and
    copies the signed list over. Copying an older list back must not let the site in."""
    import shutil

    ca = init_pki(tmp_path / "ca")
    add_site(ca, "site-a")
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    for name in ("ca.pem", "server.pem", "server.key", "revoked.crl.pem"):
        shutil.copy2(ca / name, server_dir / name)
    old_list = (ca / "revoked.crl.pem").read_bytes()
    f = GrpcFleet("127.0.0.1:0", job_id="j", pki_dir=server_dir, heartbeat_s=0.5)
    try:
        revoke_site(ca, "site-a")
        shutil.copy2(ca / "revoked.crl.pem", server_dir / "revoked.crl.pem")
        with pytest.raises(SiteConnectionError, match="is revoked"):
            run_site(f.address, make_site("site-a"), ca / "sites" / "site-a", max_attempts=1)
        (server_dir / "revoked.crl.pem").write_bytes(old_list)  # replay the older list
        with caplog.at_level(logging.ERROR), pytest.raises(SiteConnectionError, match="is revoked"):
            run_site(f.address, make_site("site-a"), ca / "sites" / "site-a", max_attempts=1)
        assert "is older than" in caplog.text
        assert f.sites() == []
    finally:
        f.close()


def test_a_second_server_cannot_share_the_port(tmp_path: Path) -> None:
    """gRPC's default SO_REUSEPORT would let two servers split the sites between them."""
    from consortia.core.errors import ConsortiaError

    d = init_pki(tmp_path / "pki")
    first = GrpcFleet("127.0.0.1:0", job_id="a", pki_dir=d, heartbeat_s=0.5)
    try:
        with pytest.raises(ConsortiaError, match="port is in use"):
            GrpcFleet(first.address, job_id="b", pki_dir=d, heartbeat_s=0.5)
    finally:
        first.close()


def test_one_certificate_cannot_hold_more_than_two_streams(
    fleet: GrpcFleet, pki: Path, start_site: SiteStarter
) -> None:
    """An enrolled site opening streams that never say hello would take the server's
    workers from the other sites; its third stream is refused at once and counted."""
    from consortia.fleet.grpc.credentials import site_credentials

    creds = site_credentials(pki / "sites" / "hostile")
    channels = [grpc.secure_channel(fleet.address, creds) for _ in range(3)]
    try:
        silent = [  # streams that send nothing: each holds a server worker until cancelled
            connect_method(ch, pb.SiteMessage.SerializeToString)(iter(threading.Event().wait, 1))
            for ch in channels[:2]
        ]
        time.sleep(0.5)
        third = connect_method(channels[2], pb.SiteMessage.SerializeToString)(
            iter([pb.SiteMessage(hello=pb.Hello(site_name="hostile", protocol_version=V))]),
            timeout=5,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(third)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert any("already holds 2 streams" in r for _, r in fleet.refusals)
        start_site(fleet, make_site("site-a"))  # an honest site still gets in
        assert fleet.wait_for_sites(1, timeout=10) == ["site-a"]
        for call in silent:
            call.cancel()
    finally:
        for ch in channels:
            ch.close()


def test_a_connection_that_never_starts_tls_is_closed_within_seconds(fleet: GrpcFleet) -> None:
    import socket

    from consortia.fleet.grpc.server import HANDSHAKE_TIMEOUT_S

    host, port = fleet.address.rsplit(":", 1)
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=HANDSHAKE_TIMEOUT_S + 10) as s:
        assert s.recv(1) == b""  # the server hung up on the silent stranger
    assert time.monotonic() - t0 < HANDSHAKE_TIMEOUT_S + 5


def test_strangers_cannot_hold_more_connections_than_the_cap(
    pki: Path, start_site: SiteStarter
) -> None:
    """Finding: idle TCP connections were held for 120 s with no cap until the server ran
    out of descriptors. Past the cap new ones are closed at once; the rest within the
    handshake timeout; then an honest site connects."""
    import socket

    from consortia.fleet.grpc.server import HANDSHAKE_TIMEOUT_S, connection_cap

    f = GrpcFleet("127.0.0.1:0", job_id="j", pki_dir=pki, heartbeat_s=0.5, max_sites=2)
    cap = connection_cap(2)
    host, port = f.address.rsplit(":", 1)
    strangers = [socket.create_connection((host, int(port))) for _ in range(cap + 10)]
    try:
        t0 = time.monotonic()
        closed_at = _closing_times(strangers, t0, HANDSHAKE_TIMEOUT_S + 5)
        assert len(closed_at) == len(strangers)  # every one was closed by the server
        quick = sum(t < 1.0 for t in closed_at)
        assert quick >= 10  # everything past the cap: refused at once
        assert max(closed_at) < HANDSHAKE_TIMEOUT_S + 3  # the others: at the handshake timeout
        start_site(f, make_site("site-a"))
        assert f.wait_for_sites(1, timeout=10) == ["site-a"]
    finally:
        for s in strangers:
            s.close()
        f.close()


def _closing_times(socks: list[Any], t0: float, limit: float) -> list[float]:
    """When (seconds after ``t0``) the server closed each socket, watching all at once."""
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    times: list[float] = []
    while len(times) < len(socks) and time.monotonic() - t0 < limit:
        for key, _ in sel.select(timeout=0.1):
            if key.fileobj.recv(1) == b"":  # type: ignore[union-attr]
                times.append(time.monotonic() - t0)
                sel.unregister(key.fileobj)
    sel.close()
    return times
