"""Whole simulated rounds with secure aggregation give the plain run's model, within the
fixed-point bound, on both in-process fleets: the masks in 32-bit words, the server's sum in
those words, the site's cached bundle keys and its own-neighbours graph all have to agree
end to end for this to hold."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia
from consortia.core.config import parse_job

APP = """
import numpy as np
from consortia import Dataset

def make_model():
    return {"w": np.zeros(3001, np.float32)}

def load_data():
    x = np.random.default_rng(0).standard_normal((600, 4)).astype(np.float32)
    return Dataset(x[:480], np.zeros(480, np.int64), x[480:], np.zeros(120, np.int64))

def fit(params, x, y, settings, rng):
    w = params["w"]
    # each site moves differently (its data's mean, per position), so the weighted mean
    # of the updates is not any one site's update
    w += np.float32(0.1) * np.resize(x.mean(axis=0), w.size) * np.float32(len(x) / 100)
    return {"w": w}, {}

def evaluate(params, x, y):
    return {"loss": float(np.abs(params["w"]).mean())}
"""


def _job(secure: bool, fleet: str) -> Any:
    doc: dict[str, Any] = {
        "name": "secure-sum",
        "rounds": 3,
        "seed": 0,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": {"preset": "fedavg", "sites_per_round": 7, "min_sites": 3},
        "evaluation": {"central_every": 1},
        # quantity skew: unequal example counts, so the weighting is exercised too
        "simulation": {
            "sites": 7,
            "workers": 2,
            "fleet": fleet,
            "partition": {"method": "quantity", "seed": 0},
        },
    }
    if secure:
        doc["secure_aggregation"] = {}
    return parse_job(doc, "secure-sum")


@pytest.mark.parametrize("fleet", ["debug", "pool"])
def test_secure_rounds_reach_the_plain_model_within_the_encoding_bound(
    tmp_path: Path, fleet: str
) -> None:
    (tmp_path / "app.py").write_text(APP)
    runs = {}
    for secure in (False, True):
        runs[secure] = consortia.simulate(
            _job(secure, fleet), out=tmp_path / f"run-{secure}", base_dir=tmp_path
        )
    plain, masked = runs[False].weights, runs[True].weights
    assert np.abs(plain).max() > 0.01  # the sites did move the model
    # 7 sites in 32 bits: scale ~3e8, so the decoded mean is off by well under 1e-6
    np.testing.assert_allclose(masked, plain, atol=1e-6, rtol=0)
    report = runs[True].summary["secure_aggregation"]["per_round"]
    assert [r["masked_inputs"] for r in report] == [7, 7, 7]
    assert all(r["individual_updates_unmasked"] == 0 for r in report)
