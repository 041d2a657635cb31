"""Which robust aggregators a privacy mode admits, checked when the job file is read."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia
from consortia.core.config import parse_job
from consortia.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ROBUST = ["median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median"]
ROBUST += ["centered_clipping", "fltrust"]


def _job(aggregator: str, mode: str) -> dict[str, Any]:
    privacy: dict[str, Any] = {"mode": mode}
    if mode == "local":
        privacy["local_noise_multiplier"] = 1.0
    else:
        privacy.update(sample_rate=0.5, clip_norm=1.0, noise_multiplier=1.0)
    strategy: dict[str, Any] = {"aggregator": aggregator}
    if mode == "local":
        strategy["sites_per_round"] = 2
    return {
        "rounds": 1,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": strategy,
        "privacy": privacy,
    }


@pytest.mark.parametrize("aggregator", [*ROBUST, "norm_bounded_mean"])
def test_distributed_dp_refuses_every_aggregator_that_sees_single_updates(aggregator: str) -> None:
    with pytest.raises(ConfigError, match=r"strategy\.aggregator: .*never sees one update"):
        parse_job(_job(aggregator, "distributed"))


@pytest.mark.parametrize("aggregator", ROBUST)
def test_central_dp_refuses_robust_rules_whose_sensitivity_is_unbounded(aggregator: str) -> None:
    with pytest.raises(ConfigError, match=rf"strategy\.aggregator: '{aggregator}' needs every"):
        parse_job(_job(aggregator, "central"))


def test_central_dp_admits_the_norm_bounded_mean_and_local_dp_admits_any() -> None:
    assert parse_job(_job("norm_bounded_mean", "central")).strategy.aggregator == (
        "norm_bounded_mean"
    )
    for aggregator in ROBUST:
        assert parse_job(_job(aggregator, "local")).strategy.aggregator == aggregator


def test_the_refusal_names_the_defence_that_composes() -> None:
    with pytest.raises(ConfigError, match=r"norm bound the sites apply themselves"):
        parse_job(_job("krum", "central"))


def test_central_dp_with_the_norm_bounded_mean_trains(tmp_path: Path) -> None:
    job = consortia.load_job(ROOT / "tests" / "fixtures" / "toy_job.toml").model_dump()
    job["strategy"].pop("sites_per_round")
    job["strategy"]["aggregator"] = "norm_bounded_mean"
    job["strategy"]["aggregator_options"] = {"max_norm": 0.5}
    job["privacy"] = {"mode": "central", "sample_rate": 1.0, "clip_norm": 1.0}
    job["privacy"]["noise_multiplier"] = 1e-3
    cfg = parse_job(job)
    result = consortia.simulate(
        cfg, base_dir=ROOT / "tests" / "fixtures", out=tmp_path / "run", debug=True, rounds=1
    )
    # Each site's update (lr 0.5 toward its mean ~ (1, 2, 3)) is far over 0.5: every one is
    # clipped to 0.5, so the mean of equal directions has norm 0.5 (noise of std 1e-3 / 6).
    assert np.linalg.norm(result.weights) == pytest.approx(0.5, rel=1e-2)
