"""The Trainer protocol every framework adapter implements.

Trainers work on flat vectors at their edges: the framework's own model object lives
inside the trainer (one per process) and never crosses a process or network boundary.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from consortia.core.messages import TrainSettings
from consortia.core.spec import ModelSpec


class Trainer(Protocol):
    """A trainer may also set ``returns_fresh_vectors = True``: its ``fit`` returns a new
    array that it keeps no reference to, so the site computes the update in that array
    rather than in one more model-sized one. Trainers without it are left alone."""

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        """The model's spec and freshly initialised parameters."""
        ...

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Train locally from ``weights``; return the new weights and training metrics."""
        ...

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        """Metrics (at least ``loss``; ``accuracy`` for classifiers) of ``weights`` on (x, y)."""
        ...
