"""The site app and task of the chaos load benchmark: a linear model small enough that a
thousand sites fit in one load-generator process, so that what is measured is the server
holding connections and running rounds, not training."""

from __future__ import annotations

from typing import Any

import numpy as np

from consortia import Dataset, Site, SiteData
from consortia.client.trainers.numpy import FunctionTrainer
from consortia.core.messages import TrainSettings

FEATURES = 16


def make_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(FEATURES, np.float32), "b": np.zeros(1, np.float32)}


def load_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return Dataset(x[:48], y[:48], x[48:], y[48:])


def fit(
    params: dict[str, np.ndarray], x: Any, y: Any, settings: TrainSettings, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One step toward the site's feature mean: cheap, deterministic given the data."""
    lr = np.float32(settings.lr)
    w = params["w"] + lr * (x.mean(axis=0) - params["w"])
    b = params["b"] + lr * (np.float32(y.mean()) - params["b"])
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}, {"loss": 0.0}


def evaluate(params: dict[str, np.ndarray], x: Any, y: Any) -> dict[str, float]:
    err = float(np.square(x - params["w"]).mean())
    return {"loss": err, "accuracy": 1.0 / (1.0 + err)}


def make_site(site_name: str) -> Site:
    """Every site holds a slice of the same small data set, chosen by a hash of its name."""
    data = load_data()
    k = sum(site_name.encode()) % 4
    x, y = data.x_train[k::4], data.y_train[k::4]
    return Site(site_name, FunctionTrainer(make_model, fit, evaluate), SiteData(x, y, x[:4], y[:4]))
