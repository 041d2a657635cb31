"""A large model with trivial local work: one float32 vector of ``BIGMODEL_PARAMS``
parameters (10M by default, 40 MB), so that a round measures how the engine moves large
models (the W6 workload of ``bench/bigmodel.py``).

Each site adds 0.01 x the mean of its features to every parameter (as the Flower script of
the same workload does); evaluation reads ten parameters. The data are generated, not
downloaded: 2000 rows of 4 standard-normal features, the first 1600 for training.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from consortia import Dataset

PARAMS = int(os.environ.get("BIGMODEL_PARAMS", 10_000_000))


def make_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(PARAMS, np.float32)}


def load_data() -> Dataset:
    x = np.random.default_rng(0).standard_normal((2000, 4)).astype(np.float32)
    y = np.zeros(2000, np.int64)
    return Dataset(x[:1600], y[:1600], x[1600:], y[1600:])


def fit(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, settings: Any, rng: Any
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    w = params["w"]
    w += np.float32(0.01) * np.float32(x.mean())  # in place: the params are the site's copy
    return {"w": w}, {}


def evaluate(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"loss": float(np.abs(params["w"][:10]).mean())}
