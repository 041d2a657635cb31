"""The hardening findings replayed against a live ``consortia server`` process on loopback
(the in-process versions in tests/fleet/grpc and tests/server pin down the details):
strangers holding connections, one certificate holding streams, a second server on the
same port or run folder, an older revocation list copied back, and a site claiming a
trillion examples. Each attack is played from outside the server's process, as an
attacker would, and the server must go on to finish its job or keep refusing."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import toy_app
from deploy_helpers import TOY_APP, TOY_JOB, Proc, client_args, free_port, server_args

from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.client import connect_method
from consortia.fleet.grpc.credentials import site_credentials
from consortia.fleet.grpc.server import HANDSHAKE_TIMEOUT_S, connection_cap
from consortia.security.pki import add_site, init_pki, revoke_site

Spawn = Callable[..., Proc]


def _hung_up(sock: socket.socket, deadline: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open at ``deadline``)."""
    t0 = time.monotonic()
    sock.settimeout(max(0.01, deadline - t0))
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        data = b""
    except TimeoutError:
        return None
    return time.monotonic() - t0 if data == b"" else None


def test_strangers_one_greedy_site_and_a_second_server_cannot_stop_the_job(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    """Findings 2, 3 and 8: idle TCP connections held the server's descriptors until it
    died; one enrolled certificate held every stream; a second server could share the
    port and split the sites. All three are tried on one live server before its sites
    join, and the job then runs to the end."""
    port, out = free_port(), tmp_path / "run"
    args = server_args(TOY_JOB, port, pki, out, "--min-sites", "3", "--max-sites", "3")
    server = spawn("server", args)
    server.wait_for_text("waiting for sites", 30)

    # Strangers: every connection past the cap is closed at once, the rest at the
    # handshake timeout, and the server is still there afterwards.
    cap = connection_cap(3)
    strangers = [socket.create_connection(("127.0.0.1", port)) for _ in range(cap + 10)]
    try:
        past_cap = [_hung_up(s, time.monotonic() + 2) for s in strangers[-10:]]
        assert all(t is not None and t < 2 for t in past_cap), past_cap
        end = time.monotonic() + HANDSHAKE_TIMEOUT_S + 5
        held = [_hung_up(s, end) for s in strangers[:-10]]
        assert all(t is not None for t in held), "a silent stranger kept its connection"
    finally:
        for s in strangers:
            s.close()

    # One enrolled site: two silent streams, its third refused with RESOURCE_EXHAUSTED.
    creds = site_credentials(pki / "sites" / "hostile")
    channels = [grpc.secure_channel(f"127.0.0.1:{port}", creds) for _ in range(3)]
    never = threading.Event()
    try:
        silent = [
            connect_method(ch, pb.SiteMessage.SerializeToString)(iter(never.wait, 1))
            for ch in channels[:2]
        ]
        time.sleep(0.5)
        hello = pb.SiteMessage(
            hello=pb.Hello(site_name="hostile", protocol_version=codec.PROTOCOL_VERSION)
        )
        third = connect_method(channels[2], pb.SiteMessage.SerializeToString)(
            iter([hello]), timeout=10
        )
        try:
            list(third)
            raise AssertionError("a third stream from one certificate was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        for call in silent:
            call.cancel()
    finally:
        never.set()
        for ch in channels:
            ch.close()

    # A second server: the same port is refused, and so is the same run folder.
    same_port = spawn("server-2", server_args(TOY_JOB, port, pki, tmp_path / "other"))
    assert same_port.wait(30) != 0
    assert "port is in use" in same_port.output()
    same_folder = spawn("server-3", server_args(TOY_JOB, free_port(), pki, out))
    assert same_folder.wait(30) != 0
    assert "in use by another consortia process" in same_folder.output()

    for s in toy_app.SITES:
        spawn(s, client_args(port, s, pki / "sites" / s, TOY_APP))
    assert server.wait(60) == 0, server.output()[-3000:]
    log = server.output()
    assert "already holds 2 streams" in log
    assert "Traceback" not in log
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 4


def test_an_older_revocation_list_copied_to_a_live_server_does_not_let_a_site_back(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Finding 6. The server's folder has no CA key: the operator revokes in the offline
    CA's folder and copies the signed list over; replaying the older list is refused."""
    ca = init_pki(tmp_path / "ca")
    add_site(ca, "site-a")
    served = tmp_path / "server-pki"
    served.mkdir()
    for name in ("ca.pem", "server.pem", "server.key", "revoked.crl.pem"):
        shutil.copy2(ca / name, served / name)
    older = (ca / "revoked.crl.pem").read_bytes()
    port = free_port()
    server = spawn("server", server_args(TOY_JOB, port, served, tmp_path / "run"))
    server.wait_for_text("waiting for sites", 30)
    revoke_site(ca, "site-a")
    shutil.copy2(ca / "revoked.crl.pem", served / "revoked.crl.pem")
    site_dir = ca / "sites" / "site-a"
    first = spawn("site-a-1", client_args(port, "site-a", site_dir, TOY_APP))
    assert first.wait(30) != 0
    assert "revoked" in first.output()
    (served / "revoked.crl.pem").write_bytes(older)  # the replay
    second = spawn("site-a-2", client_args(port, "site-a", site_dir, TOY_APP))
    assert second.wait(30) != 0
    assert "revoked" in second.output()
    assert "is older than" in server.output()
    assert server.popen.poll() is None  # still serving


def test_a_site_claiming_a_trillion_examples_has_its_weight_capped(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    """Finding 9: a claimed example count was the averaging weight, bounded only by 2^53.
    By default each weight is capped at 10 x the previous round's median weight."""
    port, out = free_port(), tmp_path / "run"
    server = spawn("server", server_args(TOY_JOB, port, pki, out, "--min-sites", "3"))
    greedy = TOY_APP.replace(":make_site", ":make_site_claiming_huge_counts")
    for s in toy_app.SITES:
        spawn(s, client_args(port, s, pki / "sites" / s, greedy if s == "site-c" else TOY_APP))
    assert server.wait(60) == 0, server.output()[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # Round 1 has no previous median to cap against; from round 2 on, site-c is capped.
    assert [r.get("capped_weights", 0) for r in rows] == [0, 1, 1, 1], rows
