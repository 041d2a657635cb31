"""A NumPy task and site app for deployment tests: fast to import, deterministic, and each
site's training can be slowed down by name (``CONSORTIA_TOY_SLEEP="site-c=3,site-a=0.2"``)
so that tests can act while a round is in flight."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from consortia import Dataset, Site, SiteData
from consortia.client.trainers.numpy import FunctionTrainer
from consortia.core.messages import TrainSettings

SITES = ("site-a", "site-b", "site-c")


def make_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(5, np.float32), "b": np.zeros(1, np.float32)}


def load_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5)).astype(np.float32) + np.arange(5, dtype=np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return Dataset(x[:45], y[:45], x[45:], y[45:])


def fit(
    params: dict[str, np.ndarray], x: Any, y: Any, settings: TrainSettings, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Pull w toward the site's mean, plus seeded noise: the result depends on the seed the
    server derived for (round, site), so a wrong seed would change the final digest."""
    noise = rng.standard_normal(5).astype(np.float32) * np.float32(0.01)
    w = params["w"] + np.float32(settings.lr) * (x.mean(axis=0) - params["w"]) + noise
    b = params["b"] + np.float32(settings.lr) * (np.float32(y.mean()) - params["b"])
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}, {"loss": float(noise.std())}


def evaluate(params: dict[str, np.ndarray], x: Any, y: Any) -> dict[str, float]:
    err = float(np.square(x - params["w"]).mean())
    return {"loss": err, "accuracy": 1.0 / (1.0 + err)}


def _sleep_for(site_name: str) -> float:
    for item in os.environ.get("CONSORTIA_TOY_SLEEP", "").split(","):
        name, _, seconds = item.partition("=")
        if name == site_name:
            return float(seconds)
    return 0.0


def make_site(site_name: str) -> Site:
    """Site ``site-a`` takes examples 0, 3, 6, ...; ``site-b`` 1, 4, ...; others by index."""
    data = load_data()
    k = SITES.index(site_name) if site_name in SITES else len(site_name) % 3
    pause = _sleep_for(site_name)

    def slow_fit(*args: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        if pause:
            time.sleep(pause)
        return fit(*args)

    trainer = FunctionTrainer(make_model, slow_fit, evaluate)
    x, y = data.x_train[k::3], data.y_train[k::3]
    return Site(site_name, trainer, SiteData(x, y, x[:4], y[:4]))


def make_site_with_markup_errors(site_name: str) -> Site:
    """A site whose training fails with text that is console markup ("[/]" closes a
    style that was never opened: rich raises MarkupError if it ever interprets it)."""
    site = make_site(site_name)

    def fit_fails(*args: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        raise RuntimeError("[/] [bold red]disk full[/bold red] [link=http://x]y[/link]")

    site.trainer = FunctionTrainer(make_model, fit_fails, evaluate)
    return site


HUGE_COUNT = 10**12


def make_site_claiming_huge_counts(site_name: str) -> Site:
    """A site that trains honestly but claims a trillion examples, to own the weighted mean."""
    import dataclasses

    site = make_site(site_name)
    honest = site.on_fit

    def on_fit(ins: Any) -> Any:
        return dataclasses.replace(honest(ins), num_examples=HUGE_COUNT)

    site.on_fit = on_fit  # type: ignore[method-assign]
    return site
