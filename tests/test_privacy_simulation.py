"""Differential privacy through whole simulated runs: budget, site policy, reports."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from consortia.client.policy import PolicyRefusal, SitePolicy
from consortia.client.runtime import privatize_update
from consortia.core.config import parse_job
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.messages import ClientPrivacy, FitIns, FitRes, TrainSettings
from consortia.privacy import epsilon_for
from consortia.server.run import failing_sites
from consortia.server.store import STORE_FILE, ServerStore
from consortia.simulation import simulate
from consortia.strategy.selection import PoissonSelection

ROOT = Path(__file__).resolve().parents[1]


def _job(tmp_path, privacy, rounds=4, sites=40, **sim):
    shutil.copy(ROOT / "tests" / "fixtures" / "toy_app.py", tmp_path / "toy_app.py")
    return parse_job(
        {
            "rounds": rounds,
            "task": {"framework": "numpy", "app": "toy_app.py"},
            "train": {"lr": 0.5},
            "strategy": {},
            "privacy": {"seeded_noise": True, **privacy},
            "simulation": {"sites": sites, "partition": {"method": "iid"}, **sim},
        }
    )


def _site_reports(run):
    """Each site's own report: site_reports/<site>.json."""
    return {p.stem: json.loads(p.read_text()) for p in (run / "site_reports").glob("*.json")}


CENTRAL = {"mode": "central", "sample_rate": 0.25, "clip_norm": 1.0, "noise_multiplier": 1.0}


def test_central_dp_reports_epsilon_each_round_as_dp_accounting_does(tmp_path):
    result = simulate(_job(tmp_path, CENTRAL), out=tmp_path / "run", base_dir=tmp_path)
    eps = [row["epsilon"] for row in result.history]
    for r, e in enumerate(eps, start=1):
        assert e == pytest.approx(epsilon_for(1.0, 0.25, r, 1e-5)["rdp"], rel=1e-6)
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["mode"] == "central" and report["sampling"]["kind"] == "poisson"
    assert report["sampling"]["expected_sites"] == pytest.approx(10.0)
    assert report["epsilon"]["rdp"] == pytest.approx(eps[-1])
    assert report["epsilon"]["pld"] <= report["epsilon"]["rdp"]
    assert "SEEDED" in report["noise_source"]
    per_site = _site_reports(tmp_path / "run")
    assert sum(s["rounds_participated"] for s in per_site.values()) == sum(
        row["replies"]
        for row in result.history  # the store's rows: the operator's record
    )
    assert all(s["epsilon"] == report["epsilon"]["best"] for s in per_site.values())
    assert result.summary["privacy"]["epsilon"]["rdp"] == pytest.approx(eps[-1])


def test_job_budget_stops_before_the_round_that_would_exceed_it(tmp_path):
    limit = epsilon_for(1.0, 0.25, 2, 1e-5)["rdp"] + 1e-6  # room for exactly two rounds
    job = _job(tmp_path, {**CENTRAL, "epsilon_limit": limit}, rounds=5)
    result = simulate(job, out=tmp_path / "run", base_dir=tmp_path, debug=True)
    assert result.summary["status"] == "budget_exhausted"
    assert result.summary["rounds_completed"] == 2 and len(result.history) == 2
    assert "round 3 not run" in result.summary["stopped"]
    assert result.history[-1]["epsilon"] <= limit
    assert (tmp_path / "run" / "model.safetensors").exists()
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["budget"]["stopped"].startswith("round 3 not run")


def test_site_policy_refuses_rounds_past_its_epsilon(tmp_path):
    # A limit between the cost of one round and of two: round 2 must be refused.
    one = epsilon_for(1.0, 0.25, 1, 1e-5)["rdp"]
    two = epsilon_for(1.0, 0.25, 2, 1e-5)["rdp"]
    limit = round((one + two) / 2, 3)
    job = _job(tmp_path, CENTRAL, rounds=2, site_policy={"max_epsilon": limit})
    result = simulate(job, out=tmp_path / "run", base_dir=tmp_path, debug=True)
    first, second = result.history
    assert first["failures"] == 0
    assert second["replies"] == 0 and second["failures"] == second["sites"] > 0
    reason = next(iter(second["failed_sites"].values()))
    assert "refuses round 2" in reason and f"over its limit of {limit:g}" in reason
    # Sites first sampled in round 2 refused every round they were asked: said out loud,
    # but under DP the published summary names none of them (the store does).
    assert result.summary["status"] == "degraded"
    assert "failing_sites" not in result.summary
    assert not any(s in result.summary["degraded"] for s in second["failed_sites"])
    with ServerStore(tmp_path / "run" / STORE_FILE) as store:
        failing = failing_sites([store.participants(r) for r in (1, 2)])
    assert set(second["failed_sites"]) <= set(failing)


def test_policy_unit_rules():
    ins = FitIns(
        3,
        np.zeros(4, np.float32),
        TrainSettings(),
        0,
        ClientPrivacy("central", 1.0, 1.0, 0.1, 1e-5),
    )
    SitePolicy(max_epsilon=100).check_fit("a", ins, 10, 4)
    with pytest.raises(PolicyRefusal, match=r"site a refuses round 3: its epsilon would reach"):
        SitePolicy(max_epsilon=0.5).check_fit("a", ins, 10, 4)
    plain = FitIns(1, np.zeros(4, np.float32), TrainSettings(), 0)
    with pytest.raises(PolicyRefusal, match="unbounded"):
        SitePolicy(max_epsilon=10).check_fit("a", plain, 10, 4)
    with pytest.raises(PolicyRefusal, match="requires differential privacy"):
        SitePolicy(require_privacy=True).check_fit("a", plain, 10, 4)


def test_poisson_selection_has_the_stated_rate():
    sites = [f"s{i:03d}" for i in range(200)]
    sel = PoissonSelection(0.1, seeded=True)
    sizes = [len(sel.select(sites, r, seed=0)) for r in range(300)]
    # mean 20, sd of the mean over 300 rounds ~ 0.24
    assert np.mean(sizes) == pytest.approx(20, abs=1.2)
    assert np.std(sizes) == pytest.approx(np.sqrt(200 * 0.1 * 0.9), rel=0.2)
    assert sel.select(sites, 5, 0) == sel.select(sites, 5, 0)
    assert PoissonSelection(0.1).select(sites, 5, 0) != PoissonSelection(0.1).select(sites, 5, 0)


def test_central_noise_on_the_mean_has_std_z_c_over_expected_sites(tmp_path):
    # Sites whose updates are zero: the new model is pure noise of std z*C/(qN) = 2*1/(0.5*8).
    job = _job(
        tmp_path,
        {"mode": "central", "sample_rate": 0.5, "clip_norm": 1.0, "noise_multiplier": 2.0},
        rounds=1,
        sites=8,
    ).model_dump()
    job["train"]["lr"] = 1e-12  # fit barely moves: the update is ~0
    big = tmp_path / "big_app.py"
    big.write_text(
        (tmp_path / "toy_app.py")
        .read_text()
        .replace("np.zeros(3, np.float32)", "np.zeros(20000, np.float32)")
        .replace("rng.standard_normal((200, 3))", "rng.standard_normal((200, 20000))")
        .replace("np.array([1, 2, 3], np.float32)", "0")
    )
    job["task"]["app"] = "big_app.py"
    result = simulate(parse_job(job), out=tmp_path / "run", base_dir=tmp_path)
    assert np.std(result.weights) == pytest.approx(0.5, rel=0.03)


def test_distributed_dp_round_and_too_few_survivors(tmp_path):
    dist = {"mode": "distributed", "sample_rate": 0.5, "clip_norm": 5.0, "noise_multiplier": 0.1}
    result = simulate(
        _job(tmp_path, dist, rounds=3, sites=20), out=tmp_path / "a", base_dir=tmp_path
    )
    assert result.history[-1]["epsilon"] > result.history[0]["epsilon"] > 0
    report = json.loads((tmp_path / "a" / "privacy.json").read_text())
    # The default min_sites: the largest with P(Binomial(20, 0.5) < min_sites) < 1e-3.
    assert report["mechanism"]["min_sites"] == 3 and report["mechanism"]["bits"] == 32
    assert report["mechanism"]["expected_failed_round_rate"] == pytest.approx(211 / 2**20)
    np.testing.assert_allclose(result.weights, [1, 2, 3], atol=0.6)  # it still learns
    # A seeded simulation: every site drew its noise share from its own derived seed; the
    # report says so without naming anyone, each site's own report names it; the same run
    # again gives the same model.
    own = [json.loads(f.read_text()) for f in (tmp_path / "a" / "site_reports").glob("*.json")]
    assert report["sites_seeded_noise"] and own and all(r["seeded_noise"] for r in own)
    again = simulate(
        _job(tmp_path, dist, rounds=3, sites=20), out=tmp_path / "a2", base_dir=tmp_path
    )
    np.testing.assert_array_equal(again.weights, result.weights)
    too_many = {**dist, "min_sites": 20}  # 20 needed, ~10 sampled
    with pytest.raises(RoundFailedError, match=r"round 1 fit: \d+ replies, at least 20 needed"):
        simulate(
            _job(tmp_path, too_many, rounds=1, sites=20), out=tmp_path / "b", base_dir=tmp_path
        )


def test_privacy_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="noise_multiplier or target_epsilon"):
        _job(tmp_path, {"mode": "central", "sample_rate": 0.1, "clip_norm": 1.0})
    with pytest.raises(ConfigError, match="Poisson-sampled"):
        parse_job({**_job(tmp_path, CENTRAL).model_dump(), "strategy": {"sites_per_round": 3}})


def test_target_epsilon_is_calibrated_and_met(tmp_path):
    job = _job(
        tmp_path,
        {"mode": "central", "sample_rate": 0.25, "clip_norm": 1.0, "target_epsilon": 3.0},
        rounds=4,
    )
    result = simulate(job, out=tmp_path / "run", base_dir=tmp_path)
    assert result.history[-1]["epsilon"] == pytest.approx(3.0, rel=0.02)
    assert result.history[-1]["epsilon"] <= 3.0 + 1e-9


def test_local_dp_sgd_run_accounts_each_site_and_keeps_state_dict_keys(tmp_path):
    from consortia.core.config import load_job

    cfg = load_job(ROOT / "examples" / "digits" / "job.toml").model_dump()
    cfg.update(rounds=2, seed=0)
    cfg["train"]["local_epochs"] = 1
    cfg["strategy"]["sites_per_round"] = 3
    cfg["simulation"]["sites"] = 10
    cfg["privacy"] = {"mode": "local", "local_noise_multiplier": 1.0, "seeded_noise": True}
    result = simulate(parse_job(cfg), out=tmp_path / "run", base_dir=ROOT / "examples" / "digits")
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert report["level"].startswith("example")
    per_site = _site_reports(tmp_path / "run")
    assert 3 <= len(per_site) <= 6
    for site in per_site.values():
        assert 0 < site["epsilon"]["rdp"] < float("inf")
    assert result.history[-1]["local_epsilon_max"] == pytest.approx(
        max(s["epsilon"]["rdp"] for s in per_site.values()), rel=1e-6
    )
    assert result.spec.names == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_under_dp_fit_replies_carry_no_exact_count_or_training_loss(tmp_path):
    """Finding 6 (issue 9): under central or distributed DP a site's reply holds its
    privatised update only (no example count, no training loss); under local DP no loss;
    a central run publishes no unnoised training metric, and privacy.json lists what is
    still released outside the guarantee."""
    import importlib.util

    from consortia import FunctionTrainer, Site, SiteData

    spec = importlib.util.spec_from_file_location("toy", ROOT / "tests" / "fixtures" / "toy_app.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    data = toy.load_data()
    site = Site(
        "a",
        FunctionTrainer(toy.make_model, toy.fit, toy.evaluate),
        SiteData(data.x_train, data.y_train),
    )
    w = np.zeros(3, np.float32)
    plain = site.fit(FitIns(1, w, TrainSettings(), 0))
    assert plain.num_examples == 160 and "loss" in plain.metrics  # no DP: as before
    for mode in ("central", "distributed"):
        privacy = ClientPrivacy(mode, 1.0, 1.0, 0.5, 1e-5, scale=100.0, bits=32, min_sites=2)
        reply = site.fit(FitIns(1, w, TrainSettings(), 0, privacy))
        assert reply.num_examples == 0 and reply.metrics == {}, mode
    local_ins = FitIns(1, w, TrainSettings(dp_noise_multiplier=1.0), 0)
    trained = FitRes("a", 1, w, 160, {"loss": 0.5})
    local = privatize_update(site, local_ins, lambda message: trained)
    assert local.metrics == {} and local.num_examples == 160  # listed outside the guarantee

    result = simulate(
        _job(tmp_path, CENTRAL, rounds=2, sites=8), out=tmp_path / "run", base_dir=tmp_path
    )
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows and not any(k.startswith("train_") for row in rows for k in row)
    assert not any(k.startswith("train_") for k in result.summary["final_metrics"])
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert any("federated evaluation" in item for item in report["outside_guarantee"])
