"""Real processes on loopback: ``consortia server`` and ``consortia client`` over mutual TLS.

Each test starts its own server (free port, own run folder) and clients; every wait is
bounded, and the ``spawn`` fixture kills whatever is left at teardown.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import toy_app
from deploy_helpers import (
    DIGITS_APP,
    DIGITS_JOB,
    TOY_APP,
    TOY_JOB,
    Proc,
    client_args,
    completed_rounds,
    free_port,
    query,
    server_args,
    wait_until,
)

from consortia.core.serialize import load_model
from consortia.deployment import Deployment, DeployOptions, prepare_job
from consortia.fleet.debug import DebugFleet
from consortia.fleet.grpc import SiteConnectionError, run_site
from consortia.security.pki import add_site, init_pki

Spawn = Callable[..., Proc]


def _participants(out: Path, rnd: int) -> dict[str, tuple[str, str | None]]:
    rows = query(out, "SELECT site, outcome, reason FROM participants WHERE round = ?", rnd)
    return {site: (outcome, reason) for site, outcome, reason in rows}


def test_three_sites_train_the_digits_example_over_mutual_tls(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server", server_args(DIGITS_JOB, port, pki, out, "--rounds", "3", "--min-sites", "3")
    )
    sites = ("hospital-a", "hospital-b", "hospital-c")
    # hospital-a exits when the job ends (the default); the others stay for the next job.
    clients = [
        spawn(
            s,
            client_args(
                port, s, pki / "sites" / s, DIGITS_APP, *([] if i == 0 else ["--keep-alive"])
            ),
            {"CONSORTIA_DIGITS_SHARDS": "3"},
        )
        for i, s in enumerate(sites)
    ]
    assert server.wait(60) == 0, server.output()
    log = server.output()
    assert "mutual TLS" in log and "round 3/3 done" in log and "3/3 replies" in log
    # The run folder is the simulation's: metrics, checkpoints, final model, summary, TB.
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["replies"], r["failures"]) for r in rows] == [
        (i, 3, 0) for i in (1, 2, 3)
    ]
    assert rows[-1]["accuracy"] > 0.85  # central evaluation on the digits test split
    for i in range(4):
        assert (out / "checkpoints" / f"round_{i:04d}.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["site_names"] == list(sites)
    spec, _ = load_model(out / "model.safetensors")
    assert spec.size == 64 * 128 + 128 + 128 * 10 + 10  # the digits MLP
    assert (
        query(out, "SELECT model_digest FROM rounds WHERE number = 3")[0][0]
        == summary["model_digest"]
    )
    assert list((out / "tensorboard").iterdir())
    assert {p: o for p, (o, _) in _participants(out, 3).items()} == dict.fromkeys(sites, "replied")
    # Each client showed its connection and its rounds. The server told them the job was
    # over: hospital-a exits 0 by itself and says so; with --keep-alive the others stay
    # connected for the next job until Ctrl-C or SIGTERM, which also end them with 0.
    assert clients[0].wait(15) == 0
    out0 = clients[0].output()
    assert f"connected to 127.0.0.1:{port} as hospital-a" in out0
    assert "round 3 fit: reply sent" in out0
    assert "is over (completed); site hospital-a exits" in out0
    # Written to a file, a log line stays one line however long (rich would wrap at 80).
    line = next(x for x in out0.splitlines() if "connected to 127.0.0.1" in x)
    assert "as hospital-a (job digits-" in line and len(line) > 80
    assert "INFO" in line
    for c in clients[1:]:
        c.wait_for_text("keeping the connection for the server's next job", 10)
        assert c.popen.poll() is None
    clients[1].signal(signal.SIGINT)
    clients[2].signal(signal.SIGTERM)
    assert [c.wait(10) for c in clients[1:]] == [0, 0]
    assert "site hospital-b stopped" in clients[1].output()


def test_sites_with_a_certificate_from_another_ca_are_refused(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "run"
    server = spawn("server", server_args(TOY_JOB, port, pki, out, "--min-sites", "3"))
    server.wait_for_text("listening on", 20)
    other = init_pki(tmp_path / "other")
    add_site(other, "site-a")  # same name, another federation's CA
    # 1. The other federation's folder as is: neither side trusts the other.
    impostor = spawn(
        "impostor",
        client_args(port, "site-a", other / "sites" / "site-a", TOY_APP, "--max-attempts", "2"),
    )
    assert impostor.wait(20) == 2
    assert "TLS handshake failed" in impostor.output()
    # 1b. Our own folder, but dialling a name the server's certificate lacks: said in words.
    misnamed = spawn(
        "misnamed",
        client_args(
            port,
            "site-a",
            pki / "sites" / "site-a",
            TOY_APP,
            "--max-attempts",
            "1",
            "--server-name",
            "wrong.example",
        ),
    )
    assert misnamed.wait(20) == 2
    assert "not for the name this site dialled" in misnamed.output()
    # 2. A foreign certificate next to OUR ca.pem: it trusts the server, the server refuses it.
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    for name in ("site.pem", "site.key"):
        (hybrid / name).write_bytes((other / "sites" / "site-a" / name).read_bytes())
    (hybrid / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    with pytest.raises(SiteConnectionError, match="refused this site's certificate"):
        run_site(
            f"127.0.0.1:{port}",
            toy_app.make_site("site-a"),
            hybrid,
            max_attempts=2,
            initial_backoff_s=0.05,
        )
    assert server.popen.poll() is None and "site site-a connected" not in server.output()
    # A stopped server keeps its state for --resume.
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 130
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert query(out, "SELECT status FROM job") == [("running",)]


def test_a_site_killed_mid_round_does_not_stall_the_round_and_rejoins_later(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server", server_args(TOY_JOB, port, pki, out, "--min-sites", "3", "--rounds", "2")
    )
    slow = {"CONSORTIA_TOY_SLEEP": "site-c=60"}
    victim = spawn("site-c", client_args(port, "site-c", pki / "sites" / "site-c", TOY_APP), slow)
    for s in ("site-a", "site-b"):
        spawn(s, client_args(port, s, pki / "sites" / s, TOY_APP))
    victim.wait_for_text("round 1 fit: working", 30)
    killed_at = time.monotonic()
    victim.popen.kill()
    wait_until(lambda: completed_rounds(out) >= 1, 10, "round 1 to complete without site-c")
    assert time.monotonic() - killed_at < 5  # the job's deadline is 20 s: nobody waited for it
    parts = _participants(out, 1)
    assert parts["site-a"] == parts["site-b"] == ("replied", None)
    assert parts["site-c"][0] == "failed" and "disconnected" in str(parts["site-c"][1])
    (metrics,) = query(out, "SELECT metrics FROM rounds WHERE number = 1")
    assert json.loads(metrics[0])["replies"] == 2
    # Round 2 waits for three sites; site-c comes back (now healthy) and takes part.
    spawn("site-c-again", client_args(port, "site-c", pki / "sites" / "site-c", TOY_APP))
    assert server.wait(30) == 0, server.output()
    assert _participants(out, 2)["site-c"] == ("replied", None)


def test_server_killed_mid_job_resumes_to_the_uninterrupted_model(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    reference = Deployment(
        prepare_job(TOY_JOB),
        DeployOptions(out=tmp_path / "reference"),
        lambda job_id: DebugFleet(list(toy_app.SITES), toy_app.make_site),
    ).run()
    port, out = free_port(), tmp_path / "run"
    pace = {"CONSORTIA_TOY_SLEEP": "site-a=0.3,site-b=0.3,site-c=0.3"}
    clients = [
        spawn(s, client_args(port, s, pki / "sites" / s, TOY_APP), pace) for s in toy_app.SITES
    ]
    first = spawn("server-1", server_args(TOY_JOB, port, pki, out, "--min-sites", "3"))
    wait_until(lambda: completed_rounds(out) >= 2, 30, "two completed rounds")
    first.popen.send_signal(signal.SIGKILL)  # round 3 is in flight
    first.popen.wait(5)
    done = completed_rounds(out)
    assert 2 <= done < 4
    second = spawn("server-2", server_args(TOY_JOB, port, pki, out, "--min-sites", "3", "--resume"))
    assert second.wait(40) == 0, second.output()
    assert f"resuming job toy after round {done} of 4" in second.output()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_round"] == done and summary["rounds_completed"] == 4
    assert summary["model_digest"] == reference["model_digest"]
    rows = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]
    # The sites reconnected on their own, and exit when the resumed job ends.
    assert [c.wait(15) for c in clients] == [0, 0, 0]


def test_a_site_error_that_is_console_markup_is_printed_as_text_and_the_server_goes_on(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    """Finding: a site's error message with rich markup (``[/]``) reached the operator's
    console through rich, which raised MarkupError, and the server exited with its summary
    and store disagreeing. Now the text is shown as it came and every round completes."""
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server",
        server_args(TOY_JOB, port, pki, out, "--rounds", "2", "--min-sites", "3"),
    )
    hostile_app = TOY_APP.replace(":make_site", ":make_site_with_markup_errors")
    for s in toy_app.SITES:
        app = hostile_app if s == "site-c" else TOY_APP
        spawn(s, client_args(port, s, pki / "sites" / s, app))
    code = server.wait(60)
    log = server.output()
    assert "MarkupError" not in log and "Traceback" not in log, log
    assert code in (0, 3), log  # 3: completed with a failing site (degraded)
    assert "[/] [bold red]disk full[/bold red]" in log  # shown as text, not styled
    assert completed_rounds(out) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert "site-c" in summary.get("failing_sites", {}), summary
