"""Helpers for gRPC fleet tests: a toy trainer and site factory (imported by name, so the
module name is unique across the test tree)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from consortia.client.runtime import Site, SiteData
from consortia.core.messages import TrainSettings
from consortia.core.spec import ModelSpec

SITES = ("site-a", "site-b", "site-c")


class AddTrainer:
    """Local training that adds ``step`` to every weight; remembers what it was sent."""

    def __init__(self, step: float = 1.0, sleep_s: float = 0.0) -> None:
        self.step = step
        self.sleep_s = sleep_s
        self.seen: list[np.ndarray] = []

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        w = np.zeros(4, dtype=np.float32)
        return ModelSpec.from_arrays({"w": w}), w

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        self.seen.append(weights.copy())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return weights + np.asarray(self.step, dtype=weights.dtype), {
            "lr": settings.lr,
            "seed": float(seed),
        }

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        return {"loss": float(weights.sum())}


def make_site(name: str, n: int = 10, trainer: AddTrainer | None = None) -> Site:
    y = np.zeros(n)
    return Site(
        name, trainer or AddTrainer(), SiteData(np.zeros((n, 1)), y, np.zeros((2, 1)), y[:2])
    )


SiteStarter = Callable[..., tuple[threading.Thread, threading.Event]]
