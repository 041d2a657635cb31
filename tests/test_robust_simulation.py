"""Robust aggregators in whole simulated runs: options from the job file, FLTrust's root
update trained by the server, state across rounds."""

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
