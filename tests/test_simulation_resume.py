"""A simulation is a durable run: killed with SIGKILL at any point and resumed, it ends
with the model an uninterrupted run gives; a silent site costs a round the grace period."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import consortia
from consortia.core.errors import ConfigError
from consortia.server.store import StoreError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

JOB = """
name = "resume"
rounds = 8
seed = 11

[task]
framework = "numpy"
app = "toy_app.py"
fit = "fit_slowly"

[train]
lr = 0.3

[strategy]
preset = "fedadam"        # server optimiser state that a resume must restore
sites_per_round = 4
min_sites = 2

[evaluation]
central_every = 1

[simulation]
sites = 6
workers = 2
"""


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "toy_app.py", tmp_path / "toy_app.py")
    path = tmp_path / "job.toml"
    path.write_text(JOB)
    return path


def _completed(out: Path) -> int:
    """Rounds the run's store records as completed, read from outside as an auditor would."""
    db = out / "state.sqlite"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT COUNT(*) FROM rounds WHERE status = 'completed'").fetchall()
        return int(rows[0][0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    finally:
        con.close()


def test_sigkilled_simulation_resumes_to_the_uninterrupted_model(job: Path, tmp_path: Path):
    reference = consortia.simulate(job, out=tmp_path / "reference")
    out = tmp_path / "killed"
    env = {**os.environ, "CONSORTIA_TOY_SLEEP_S": "0.15"}
    cmd = [sys.executable, "-m", "consortia.cli", "simulate", str(job), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        end = time.monotonic() + 60
        while _completed(out) < 3:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < end, "the run did not reach round 3 in 60 s"
            time.sleep(0.02)
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)  # mid-run: no handler, no cleanup, no summary
        proc.wait(10)
        # Its site workers notice and exit rather than wait forever for work.
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert workers and not alive, f"{len(alive)} pool workers outlived the killed run"
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _completed(out)
    assert 3 <= done < 8 and not (out / "summary.json").exists()
    resumed = consortia.simulate(job, out=out, resume=True)
    assert resumed.summary["resumed_from_round"] == done
    assert resumed.summary["rounds_completed"] == 8
    assert resumed.digest == reference.digest
    assert [r["round"] for r in resumed.history] == list(range(1, 9))
    np.testing.assert_array_equal(resumed.weights, reference.weights)


def test_resume_needs_a_folder_and_refuses_another_job(job: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resume"):
        consortia.simulate(job, resume=True)
    consortia.simulate(job, out=tmp_path / "run", rounds=2)
    with pytest.raises(StoreError, match="already holds job"):
        consortia.simulate(job, out=tmp_path / "run", rounds=2)
    with pytest.raises(StoreError, match="changed since job"):
        consortia.simulate(job, out=tmp_path / "run", rounds=2, seed=5, resume=True)
    same = consortia.simulate(job, out=tmp_path / "run", rounds=2, resume=True)
    assert same.summary["rounds_completed"] == 2  # nothing left to do, nothing lost
    more = consortia.simulate(job, out=tmp_path / "run", rounds=4, resume=True)
    assert more.summary["rounds_completed"] == 4 and more.summary["resumed_from_round"] == 2
    assert more.digest == consortia.simulate(job, out=tmp_path / "four", rounds=4).digest


class _Silent(consortia.SiteApp):
    """Answers evaluation but never a fit within any deadline a test would wait for."""

    def on_fit(self, ins: consortia.FitIns) -> consortia.FitRes:
        time.sleep(60)
        raise AssertionError("not reached")


def test_a_silent_site_costs_the_grace_period_not_the_deadline(job: Path, tmp_path: Path):
    text = job.read_text().replace("sites_per_round = 4", "sites_per_round = 5")
    text = text.replace("min_sites = 2", "min_sites = 2\nmin_replies = 4\ngrace_s = 1.0")
    # One worker per site: in the pool a site blocks the worker it is pinned to (a real
    # deployment's sites are separate machines; see the gRPC fleet's grace test).
    text = text.replace("sites = 6", "sites = 5").replace("rounds = 8", "rounds = 1")
    text = text.replace("workers = 2", "workers = 5")
    text = text.replace('preset = "fedadam"', 'preset = "fedavg"\ndeadline_s = 120')
    job.write_text(text)
    from consortia.client.trainers.numpy import FunctionTrainer
    from consortia.task import load_app

    app = load_app("toy_app.py", job.parent)
    data = app.load_data()

    def make_site(site_id: str) -> consortia.SiteApp:
        if site_id == "site-0002":
            return _Silent(site_id)
        trainer = FunctionTrainer(app.make_model, app.fit, app.evaluate)
        return consortia.Site(site_id, trainer, consortia.SiteData(data.x_train, data.y_train))

    start = time.monotonic()
    result = consortia.simulate(job, out=tmp_path / "run", make_site=make_site)
    took = time.monotonic() - start
    (row,) = result.history
    assert row["replies"] == 4 and row["failures"] == 1
    assert "site-0002" in row["failed_sites"] and "grace" in row["failed_sites"]["site-0002"]
    assert took < 20, f"the round waited {took:.1f} s: it should end about 1 s after 4 replies"


def test_a_subscriber_that_raises_never_stops_the_run(job: Path, tmp_path: Path) -> None:
    heard: list[str] = []

    def broken(event: object) -> None:
        raise RuntimeError("dashboard down")

    def listening(event: object) -> None:
        heard.append(type(event).__name__)

    result = consortia.simulate(job, out=tmp_path / "run", rounds=2, listeners=[broken, listening])
    assert result.summary["status"] == "completed" and result.summary["rounds_completed"] == 2
    assert heard[0] == "RunStarted" and heard[-1] == "RunFinished"
    assert heard.count("RoundDone") == 2 and heard.count("PhaseDone") == 2
