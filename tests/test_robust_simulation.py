"""Robust aggregators in whole simulated runs: options from the job file, FLTrust's root
update trained by the server, state across rounds."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia
from consortia.core.config import parse_job
from consortia.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _job(**strategy: Any) -> consortia.JobConfig:
    job = consortia.load_job(FIXTURES / "toy_job.toml").model_dump()
    job["strategy"].update(strategy)
    return parse_job(job)


def _simulate(cfg: consortia.JobConfig, tmp_path: Path, **kw: Any) -> Any:
    return consortia.simulate(cfg, base_dir=FIXTURES, out=tmp_path / "run", debug=True, **kw)


def test_fltrust_trains_with_the_servers_root_update(tmp_path: Path) -> None:
    cfg = _job(aggregator="fltrust", aggregator_options={"root": "root_data"})
    result = _simulate(cfg, tmp_path)
    # Every site pulls toward the data mean (about 1, 2, 3); so does the root update, so
    # every site is trusted and the model moves toward it.
    assert result.summary["rounds_completed"] == 3
    assert np.linalg.norm(result.weights - np.array([1.0, 2.0, 3.0])) < 1.5


def test_fltrust_without_its_root_function_is_refused_naming_the_option(tmp_path: Path) -> None:
    cfg = _job(aggregator="fltrust", aggregator_options={"root": "no_such_function"})
    with pytest.raises(ConfigError, match=r"strategy\.aggregator_options\.root: .*no function"):
        _simulate(cfg, tmp_path)


def test_centered_clipping_options_reach_the_run_and_its_centre_carries_over(
    tmp_path: Path,
) -> None:
    cfg = _job(aggregator="centered_clipping", aggregator_options={"tau": 0.1})
    result = _simulate(cfg, tmp_path)
    # Round r's aggregate is at most tau = 0.1 from round r-1's (its centre), starting from
    # 0: norms at most 0.1, 0.2, 0.3, and the model is their sum. Without the carried
    # centre it could not pass 3 x 0.1.
    assert 0.55 < np.linalg.norm(result.weights) <= 0.6 + 1e-5


def test_the_audit_flags_a_flipping_site_in_its_file_tensorboard_and_summary(
    tmp_path: Path,
) -> None:
    job = consortia.load_job(FIXTURES / "toy_job.toml").model_dump()
    job["strategy"].update(sites_per_round=6, aggregator="median")
    job["task"]["site"] = "make_site_one_flipping"
    job["audit"] = {}
    result = _simulate(parse_job(job), tmp_path)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 6 and {r["round"] for r in rows} == {1, 2, 3}
    bad = [r for r in rows if r["site"] == "site-0001"]
    assert all(r["flagged"] and r["reasons"] == ["norm_z"] for r in bad)
    assert all(r["cos_aggregate"] < 0 and r["cos_others"] < 0 for r in bad)
    assert not any(r["flagged"] for r in rows if r["site"] != "site-0001")
    assert bad[0]["cos_previous"] is None and bad[1]["cos_previous"] == pytest.approx(1, abs=0.1)
    assert result.summary["audit_flagged"] == {"site-0001": [1, 2, 3]}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["flagged_sites"] == ["site-0001"] for m in metrics)
    assert not any(k.startswith(("norm_z", "cos_")) for m in metrics for k in m)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    cos = ea.Scalars("audit/cos_aggregate/site-0001")
    assert [e.step for e in cos] == [1, 2, 3] and all(e.value < 0 for e in cos)


def test_the_audit_is_refused_where_privacy_hides_single_sites() -> None:
    job = consortia.load_job(FIXTURES / "toy_job.toml").model_dump()
    job["strategy"].pop("sites_per_round")
    job["audit"] = {}
    job["privacy"] = {"mode": "central", "sample_rate": 0.5, "clip_norm": 1.0}
    job["privacy"]["noise_multiplier"] = 1.0
    with pytest.raises(ConfigError, match=r"audit: per-site scores would publish"):
        parse_job(job)


def test_the_audit_survives_a_resume_and_shows_in_the_summary_table(tmp_path: Path) -> None:
    text = (FIXTURES / "toy_job.toml").read_text()
    text = text.replace("sites_per_round = 4", "sites_per_round = 6")
    text = text.replace('app = "toy_app.py"', 'app = "toy_app.py"\nsite = "make_site_one_flipping"')
    job = tmp_path / "job.toml"
    job.write_text(text + "\n[audit]\n")
    shutil.copy(FIXTURES / "toy_app.py", tmp_path / "toy_app.py")
    out = tmp_path / "run"
    consortia.simulate(job, out=out, debug=True, rounds=2)
    with (out / "audit.jsonl").open("a") as f:  # a row of a round that never became durable
        f.write(json.dumps({"round": 3, "site": "ghost"}) + "\n")
    result = consortia.simulate(job, out=out, debug=True, rounds=3, resume=True)
    rows = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] * 6 + [2] * 6 + [3] * 6
    assert "ghost" not in {r["site"] for r in rows}
    assert result.summary["audit_flagged"] == {"site-0001": [1, 2, 3]}

    from rich.console import Console

    from consortia.monitor.progress import summary_table

    console = Console(record=True, width=200)
    console.print(summary_table(result.summary))
    shown = console.export_text()
    assert "audit flagged: 1 site(s)" in shown and "site-0001 (rounds 1, 2, 3)" in shown
