"""The Trainer protocol every framework adapter implements.

Trainers work on flat vectors at their edges: the framework's own model object lives
inside the trainer (one per process) and never crosses a process or network boundary.
"""

from __future__ import annotations

from collections.abc import Callable
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


# Where a trainer's result vectors are made. A fleet whose sites run in worker processes
# installs an allocator there (``set_vector_allocator``) that hands out memory the server
# reads in place, so that a large model's update reaches it without a copy; it may decline
# (None), and then the vector is ordinary memory.
VectorAllocator = Callable[[int, np.dtype], "np.ndarray | None"]
_allocator: VectorAllocator | None = None


def set_vector_allocator(allocator: VectorAllocator | None) -> None:
    """Install (or, with None, remove) this process's allocator for trainers' vectors."""
    global _allocator
    _allocator = allocator


def new_vector(size: int, dtype: np.dtype) -> np.ndarray:
    """A new 1-D vector (uninitialised) for a trainer's result: the installed allocator's
    if it gives one, else ordinary memory."""
    out = _allocator(size, np.dtype(dtype)) if _allocator is not None else None
    return out if out is not None else np.empty(size, dtype=dtype)
