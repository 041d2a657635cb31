"""Differential privacy in a deployment: the accountant survives a resume; site policy files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
import toy_app
from deploy_helpers import DISTRIBUTED, TOY_JOB

from consortia.cli.client import load_policy
from consortia.client.policy import SitePolicy
from consortia.core.errors import ConfigError
from consortia.core.events import LoopState, RoundRecord
from consortia.deployment import Deployment, DeployOptions, prepare_job
from consortia.fleet.debug import DebugFleet
from consortia.privacy import epsilon_for

PRIVACY = """
[privacy]
mode = "central"
sample_rate = 1.0
clip_norm = 1.0
noise_multiplier = 2.0
population = 3
seeded_noise = true
"""


def _dp_job(tmp_path: Path, extra: str = PRIVACY) -> Path:
    shutil.copy(TOY_JOB.parent / "toy_app.py", tmp_path / "toy_app.py")
    text = TOY_JOB.read_text().replace("sites_per_round = 3\n", "")
    job = tmp_path / "dp_job.toml"
    job.write_text(text + extra)
    return job


def _run(job: Path, out: Path, **kw: object) -> dict[str, object]:
    fleet = lambda job_id: DebugFleet(list(toy_app.SITES), toy_app.make_site)  # noqa: E731
    return Deployment(prepare_job(job), DeployOptions(out=out, **kw), fleet).run()  # type: ignore[arg-type]


class _Crash(Exception):
    pass


def test_resumed_dp_job_keeps_counting_epsilon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from consortia.server.run import Run

    job = _dp_job(tmp_path)
    real = Run._commit

    def commit(self: Run, folder: Any, store: Any, record: RoundRecord, state: LoopState) -> None:
        real(self, folder, store, record, state)
        if state.round == 2:
            raise _Crash

    monkeypatch.setattr(Run, "_commit", commit)
    with pytest.raises(_Crash):
        _run(job, tmp_path / "run")
    monkeypatch.setattr(Run, "_commit", real)
    summary = _run(job, tmp_path / "run", resume=True)
    assert summary["rounds_completed"] == 4
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    want = epsilon_for(2.0, 1.0, 4, 1e-5)["rdp"]
    assert report["epsilon"]["rdp"] == pytest.approx(want, rel=1e-6)
    assert [r["round"] for r in report["per_round"]] == [1, 2, 3, 4]
    reports = [json.loads(p.read_text()) for p in (tmp_path / "run" / "site_reports").glob("*")]
    assert {r["site"]: r["rounds_participated"] for r in reports} == dict.fromkeys(toy_app.SITES, 4)
    assert summary["privacy"]["epsilon"]["rdp"] == pytest.approx(want, rel=1e-6)


def test_budget_stops_a_deployment(tmp_path: Path):
    limit = epsilon_for(2.0, 1.0, 2, 1e-5)["rdp"] + 1e-6
    job = _dp_job(tmp_path, PRIVACY + f"epsilon_limit = {limit}\n")
    summary = _run(job, tmp_path / "run")
    assert summary["status"] == "budget_exhausted" and summary["rounds_completed"] == 2
    assert "round 3 not run" in str(summary["stopped"])


def test_deployment_needs_the_population_under_central_dp(tmp_path: Path):
    job = _dp_job(tmp_path, PRIVACY.replace("population = 3\n", ""))
    with pytest.raises(ConfigError, match=r"privacy\.population"):
        _run(job, tmp_path / "run")


def test_site_policy_file(tmp_path: Path):
    good = tmp_path / "policy.toml"
    good.write_text("max_epsilon = 4.0\nrequire_privacy = true\n")
    assert load_policy(good) == SitePolicy(4.0, 1e-5, True)
    bad = tmp_path / "bad.toml"
    bad.write_text("max_epsilom = 4.0\n")
    with pytest.raises(ConfigError, match="max_epsilom: unknown key"):
        load_policy(bad)


def test_a_noised_round_that_fails_after_the_draw_is_accounted(tmp_path: Path, monkeypatch):
    """Finding 7: the noise of an attempt that fails after it was drawn (here the commit
    fails) was never accounted; the retry drew fresh noise. Both draws count."""
    from consortia.server.run import Run

    job = _dp_job(tmp_path)
    real = Run._commit
    failed: list[int] = []

    def commit(self: Run, folder: Any, store: Any, record: RoundRecord, state: LoopState) -> None:
        if state.round == 2 and not failed:
            failed.append(state.round)
            raise OSError("disk full")
        real(self, folder, store, record, state)

    monkeypatch.setattr(Run, "_commit", commit)
    summary = _run(job, tmp_path / "run")
    assert failed == [2] and summary["rounds_completed"] == 4
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert len(report["events"]) == 5  # four rounds released, and the attempt that failed
    want = epsilon_for(2.0, 1.0, 5, 1e-5)["rdp"]
    assert report["epsilon"]["rdp"] == pytest.approx(want, rel=1e-6)


def test_distributed_dp_without_secure_aggregation_states_its_guarantee_against_the_server(
    tmp_path: Path,
):
    """Finding 5: the server sees each site's encoding, which carries that site's noise
    share alone; a deployment must accept that in its job file, and privacy.json states
    the guarantee against the server beside the one against readers of the model."""
    with pytest.raises(ConfigError, match=r"privacy\.allow_without_secure_aggregation"):
        _run(_dp_job(tmp_path, DISTRIBUTED), tmp_path / "refused")
    job = _dp_job(tmp_path, DISTRIBUTED + "allow_without_secure_aggregation = true\n")
    summary = _run(job, tmp_path / "run")
    assert summary["rounds_completed"] == 4
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    guarantees = report["guarantees"]
    assert guarantees["against_readers_of_the_model"]["epsilon"] == report["epsilon"]
    server = guarantees["against_the_server"]
    m = report["mechanism"]["min_sites"]
    assert m == 3  # all three sampled, always
    assert server["noise_multiplier_per_site"] == pytest.approx(2.0 / math.sqrt(m))
    assert server["encodings_seen_max"] == 4
    # One encoding is a Gaussian release at multiplier z/sqrt(m): rho = m / (2 z^2).
    assert server["rho_per_encoding"] == pytest.approx(m / (2 * 2.0**2), rel=1e-9)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(server["rho_per_encoding"]), 4)
    assert server["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert server["epsilon"] > report["epsilon"]["rdp"]  # weaker than against the readers
