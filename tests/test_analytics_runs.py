"""DP federated analytics over simulated sites, spending from the job's budget."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from consortia.analytics import run_analytics
from consortia.cli import main
from consortia.core.config import load_job, parse_job
from consortia.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
BC = ROOT / "examples" / "breast_cancer" / "job.toml"


def test_example_queries_answer_close_to_the_truth_and_spend_budget(tmp_path):
    res = run_analytics(BC, out=tmp_path)
    r = res.results
    assert r["patients"]["value"] == pytest.approx(455, abs=40)  # Laplace scale 2
    counts = r["diagnosis"]["value"]["counts"]
    assert counts[0] == pytest.approx(170, abs=40) and counts[1] == pytest.approx(285, abs=40)
    assert abs(r["mean_radius"]["value"]) < 0.5  # standardised feature: true mean ~0
    q = r["radius_quartiles"]["value"]
    assert float(q["0.25"]) < float(q["0.5"]) < float(q["0.75"])
    assert 0 < res.epsilon["best"] <= 6.0
    saved = json.loads((tmp_path / "analytics.json").read_text())
    assert len(saved["events"]) == 5  # count, histogram, mean (2 releases), quantiles


def test_spending_accumulates_across_runs_until_the_limit_refuses(tmp_path):
    first = run_analytics(BC, out=tmp_path)
    second = run_analytics(BC, out=tmp_path)
    assert second.epsilon["best"] > first.epsilon["best"]
    assert second.refused and "over the limit of 6" in second.refused[0]
    assert second.epsilon["best"] <= 6.0


def test_analytics_share_a_training_runs_privacy_budget(tmp_path):
    shutil.copy(ROOT / "tests" / "fixtures" / "toy_app.py", tmp_path / "toy_app.py")
    job = parse_job(
        {
            "rounds": 2,
            "task": {"framework": "numpy", "app": "toy_app.py"},
            "strategy": {},
            "privacy": {
                "mode": "central",
                "sample_rate": 0.5,
                "clip_norm": 1.0,
                "noise_multiplier": 1.0,
                "epsilon_limit": 50,
                "seeded_noise": True,
            },
            "analytics": {"queries": [{"name": "n", "kind": "count", "epsilon": 1.0}]},
            "simulation": {"sites": 8},
        }
    )
    out = tmp_path / "run"
    simulate(job, out=out, base_dir=tmp_path)
    trained = json.loads((out / "privacy.json").read_text())["epsilon"]["best"]
    res = run_analytics(job, out=out, base_dir=tmp_path)
    report = json.loads((out / "privacy.json").read_text())
    assert res.epsilon["best"] > trained
    assert report["epsilon"]["best"] == pytest.approx(res.epsilon["best"])
    assert report["events"][-1]["mechanism"] == "discrete_laplace"
    assert res.results["n"]["value"] == pytest.approx(160, abs=15)


def test_cli_json_and_bad_query(tmp_path, capsys):
    assert main(["analytics", str(BC), "--out", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["results"]) == {"patients", "diagnosis", "mean_radius", "radius_quartiles"}
    cfg = load_job(BC).model_dump()
    cfg["analytics"]["queries"][2].pop("bounds")
    with pytest.raises(Exception, match=r"analytics\.queries\.2.*needs bounds"):
        parse_job(cfg)
    assert np.isfinite(data["epsilon"]["best"])
