"""The sites' task in the chaos benchmark (bench/chaos.py): NumPy, seeded, fast to import.
The model is large enough (1001 values) that a real reply travels in several 1 KiB chunks,
whose frames the fuzz part mutates, and small enough that the load part's one generator
process can answer for a thousand sites."""

from __future__ import annotations

from typing import Any

import numpy as np

from consortia import Dataset, Site, SiteData
from consortia.client.trainers.numpy import FunctionTrainer
from consortia.core.messages import TrainSettings

SITES = ("site-a", "site-b", "site-c")
WIDTH = 1000


def make_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(WIDTH, np.float32), "b": np.zeros(1, np.float32)}


def load_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, WIDTH)).astype(np.float32) + np.float32(0.5)
    y = (x[:, 0] > 0.5).astype(np.int64)
    return Dataset(x[:60], y[:60], x[60:], y[60:])


def fit(
    params: dict[str, np.ndarray], x: Any, y: Any, settings: TrainSettings, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Pull w toward the site's mean, plus noise from the seed the server derived for
    (round, site): any change in who took part, or with which seed, changes the digest."""
    noise = rng.standard_normal(WIDTH).astype(np.float32) * np.float32(0.01)
    lr = np.float32(settings.lr)
    w = params["w"] + lr * (x.mean(axis=0) - params["w"]) + noise
    b = params["b"] + lr * (np.float32(y.mean()) - params["b"])
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}, {"loss": float(noise.std())}


def evaluate(params: dict[str, np.ndarray], x: Any, y: Any) -> dict[str, float]:
    err = float(np.square(x - params["w"]).mean())
    return {"loss": err, "accuracy": 1.0 / (1.0 + err)}


def make_site(site_name: str) -> Site:
    """Site k of SITES takes training examples k, k + 3, k + 6, ...; any other site (the
    load part's thousand) the slice its name's bytes choose."""
    data = load_data()
    k = SITES.index(site_name) if site_name in SITES else sum(site_name.encode()) % 3
    x, y = data.x_train[k::3], data.y_train[k::3]
    return Site(site_name, FunctionTrainer(make_model, fit, evaluate), SiteData(x, y, x[:4], y[:4]))
