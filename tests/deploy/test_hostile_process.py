"""At least 1000 malformed or hostile messages to a live ``consortia server`` process: each is
refused with a logged reason, the server keeps serving, and its store does not change."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from deploy_helpers import (
    TOY_APP,
    TOY_JOB,
    Proc,
    client_args,
    free_port,
    query,
    server_args,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortia.fleet.grpc.credentials import site_credentials

# The hostile messages and the stream that sends them are the fuzz benchmark's too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _fuzz_peers import SiteStream
from _hostile import expected_refusals, hostile_messages


def _dump(out: Path) -> list[str]:
    db = sqlite3.connect(f"file:{out / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_a_thousand_hostile_messages_leave_the_server_up_and_its_store_unchanged(
    pki: Path, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server",
        server_args(TOY_JOB, port, pki, out, "--min-sites", "3", "--rounds", "1", heartbeat=2.0),
    )
    wait_until(lambda: query(out, "SELECT id FROM job"), 20, "the job to be recorded")
    ((job_id,),) = query(out, "SELECT id FROM job")
    server.wait_for_text("listening on", 20)
    before = _dump(out)
    raw = SiteStream(f"127.0.0.1:{port}", site_credentials(pki / "sites" / "hostile"), 1.0)
    sent: list[bytes] = []

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(hostile_messages(job_id), min_size=40, max_size=40))
    def send_batch(batch: list[bytes]) -> None:
        for data in batch:
            raw.send(data)
            sent.append(data)

    send_batch()
    assert len(sent) >= 1000
    expected = expected_refusals(sent)
    wait_until(
        lambda: server.output().count("refused from hostile:") >= expected,
        30,
        f"{expected} logged refusals",
    )
    log = server.output()
    assert log.count("refused from hostile:") == expected  # one reason per message
    assert "malformed message of" in log and "matches no open request" in log
    assert not raw.ended, "the server cut the hostile stream instead of refusing messages"
    raw.close()
    assert server.popen.poll() is None
    assert _dump(out) == before  # nothing stored changed
    # ... and it still serves: three honest sites complete the job.
    for s in ("site-a", "site-b", "site-c"):
        spawn(s, client_args(port, s, pki / "sites" / s, TOY_APP))
    assert server.wait(30) == 0, server.output()[-3000:]
    assert query(out, "SELECT site FROM participants WHERE round = 1 ORDER BY site") == [
        ("site-a",),
        ("site-b",),
        ("site-c",),
    ]
