"""DP federated analytics over simulated sites, spending from the job's budget."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event, pld

from consortia.analytics import run_analytics
from consortia.cli import main
from consortia.core.config import load_job, parse_job
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent, pld_interval
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
    record = saved["budgets"]["record"]
    assert record["unit"].startswith("record")
    assert len(record["events"]) == 5  # count, histogram, mean (2 releases), quantiles


def test_spending_accumulates_across_runs_until_the_limit_refuses(tmp_path):
    first = run_analytics(BC, out=tmp_path)
    second = run_analytics(BC, out=tmp_path)
    assert second.epsilon["best"] > first.epsilon["best"]
    assert second.refused and "over the limit of 6" in second.refused[0]
    assert second.epsilon["best"] <= 6.0


def _fixture(tmp_path, name):
    shutil.copy(ROOT / "tests" / "fixtures" / name, tmp_path / name)


def test_analytics_after_central_training_keep_the_units_apart(tmp_path):
    """Finding 4 (issue 9): record-level query events are never composed into the training's
    site-level accountant; each budget is labelled by its unit, and the site-level limit
    is not what a record-level query is judged by."""
    _fixture(tmp_path, "toy_app.py")
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
            "analytics": {
                "epsilon_limit": 1.5,
                "queries": [
                    {"name": "n", "kind": "count", "epsilon": 1.0},
                    {"name": "again", "kind": "count", "epsilon": 1.0},
                ],
            },
            "simulation": {"sites": 8},
        }
    )
    out = tmp_path / "run"
    simulate(job, out=out, base_dir=tmp_path)
    before = json.loads((out / "privacy.json").read_text())
    res = run_analytics(job, out=out, base_dir=tmp_path)
    after = json.loads((out / "privacy.json").read_text())
    # The site-level guarantee of training is untouched, events and figure alike.
    assert after["epsilon"] == before["epsilon"] and after["events"] == before["events"]
    # The query's own record-level budget, checked against dp-accounting directly.
    grid = pld_interval(after["analytics"]["epsilon"]["rdp"])
    direct = pld.PLDAccountant(value_discretization_interval=grid)
    direct.compose(dp_event.DiscreteLaplaceDpEvent(noise_parameter=1.0, sensitivity=1))
    assert after["analytics"]["unit"].startswith("record")
    assert after["analytics"]["epsilon"]["pld"] == pytest.approx(direct.get_epsilon(1e-5))
    assert res.epsilon["best"] == pytest.approx(1.0, abs=1e-3)
    # The second query would pass the site-level limit of 50 but not the record-level 1.5.
    assert "again" in res.refused[0] and "record-level epsilon" in res.refused[0]
    saved = json.loads((out / "analytics.json").read_text())
    assert saved["budgets"]["site"]["unit"].startswith("site")
    assert saved["budgets"]["site"]["epsilon"] == before["epsilon"]
    assert res.results["n"]["value"] == pytest.approx(160, abs=15)


def test_analytics_after_local_dp_add_to_the_worst_sites_training_spend(tmp_path):
    """Finding 3 (issue 9): after a local-DP run, queries add to what DP-SGD spent on each
    site's examples (the worst site's is what the limit must cover), and the report's
    top-level figures are never overwritten with the query's."""
    _fixture(tmp_path, "torch_toy_app.py")
    job = parse_job(
        {
            "rounds": 2,
            "task": {"framework": "torch", "app": "torch_toy_app.py", "loss": "cross_entropy"},
            "train": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
            "strategy": {"sites_per_round": 4},
            "privacy": {"mode": "local", "local_noise_multiplier": 0.6, "seeded_noise": True},
            "analytics": {
                "epsilon_limit": 3.0,
                "queries": [{"name": "n", "kind": "count", "epsilon": 1.0}],
            },
            "simulation": {"sites": 4},
        }
    )
    out = tmp_path / "run"
    simulate(job, out=out, base_dir=tmp_path, debug=True)
    before = json.loads((out / "privacy.json").read_text())
    per_site = [json.loads(p.read_text()) for p in (out / "site_reports").glob("*.json")]
    spent = max(s["epsilon"]["best"] for s in per_site)
    assert spent > 3.0  # training alone is past the record-level limit
    res = run_analytics(job, out=out, base_dir=tmp_path)
    assert res.refused and "record-level epsilon" in res.refused[0]
    assert "value" not in res.results["n"]
    after = json.loads((out / "privacy.json").read_text())
    assert {k: after[k] for k in before} == before  # nothing of training's report changed
    assert after["analytics"]["epsilon"]["best"] == pytest.approx(spent, rel=1e-6)
    # Without a limit the query runs, and the worst record's epsilon is its site's DP-SGD
    # events composed with the query, as dp-accounting computes it.
    free = parse_job(
        {
            **job.model_dump(),
            "analytics": {"queries": [{"name": "n", "kind": "count", "epsilon": 1.0}]},
        }
    )
    res = run_analytics(free, out=out, base_dir=tmp_path)
    worst = max(per_site, key=lambda s: s["epsilon"]["best"])
    composed = PrivacyAccountant.from_dict(worst).dp_event(
        [PrivacyEvent("discrete_laplace", noise_multiplier=1.0)]
    )
    direct = pld.PLDAccountant(value_discretization_interval=pld_interval(res.epsilon["rdp"]))
    direct.compose(composed)
    assert res.epsilon["pld"] == pytest.approx(direct.get_epsilon(1e-5), rel=1e-6)
    assert res.epsilon["best"] > spent


def test_cli_json_and_bad_query(tmp_path, capsys):
    assert main(["analytics", str(BC), "--out", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["results"]) == {"patients", "diagnosis", "mean_radius", "radius_quartiles"}
    cfg = load_job(BC).model_dump()
    cfg["analytics"]["queries"][2].pop("bounds")
    with pytest.raises(Exception, match=r"analytics\.queries\.2.*needs bounds"):
        parse_job(cfg)
    assert np.isfinite(data["epsilon"]["best"])
