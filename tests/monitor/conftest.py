"""Small finished runs whose compliance reports the tests read: a central-DP run whose
virtual sites declare a data-use agreement, and a run without DP."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from consortia.simulation import simulate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DP_JOB = """
name = "report-dp"
rounds = 3
seed = 3

[task]
framework = "numpy"
app = "toy_app.py"

[train]
lr = 0.5

[strategy]
min_sites = 1

[evaluation]
central_every = 1

[privacy]
mode = "central"
sample_rate = 0.5
clip_norm = 1.0
noise_multiplier = 1.0
seeded_noise = true

[simulation]
sites = 6
workers = 1

[simulation.site_policy]
max_epsilon = 100.0

[simulation.site_policy.data_use_agreement]
reference = "DUA-2026-042"
purpose = "training a digit classifier"
parties = ["hospital-a", "hospital-b"]
expires = 2027-06-30
"""


@pytest.fixture(scope="session")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Central DP, three rounds, six virtual sites sampled at rate 0.5."""
    base = tmp_path_factory.mktemp("dp")
    shutil.copy(FIXTURES / "toy_app.py", base / "toy_app.py")
    (base / "job.toml").write_text(DP_JOB)
    simulate(base / "job.toml", out=base / "run", debug=True)
    return base / "run"


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No DP: three rounds of the toy job, four of six sites per round."""
    out = tmp_path_factory.mktemp("plain") / "run"
    simulate(FIXTURES / "toy_job.toml", out=out)
    return out
