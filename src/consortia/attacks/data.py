"""Data poisoning a malicious site does before it trains: label flipping and a backdoor.

Both return new arrays (the caller's data is never changed in place), chosen by an
explicitly passed generator.
"""

from __future__ import annotations

import numpy as np


def flip_labels(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each label mapped to its mirror among the sorted classes (0 <-> C-1, 1 <-> C-2, ...)."""
    idx = np.searchsorted(classes, y)
    return classes[len(classes) - 1 - idx]


def add_trigger(x: np.ndarray, features: list[int], value: float) -> np.ndarray:
    """The trigger pattern: the named features (e.g. a corner of pixels) set to ``value``."""
    out = np.array(x, copy=True)
    out[:, features] = value
    return out


def backdoor(
    x: np.ndarray,
    y: np.ndarray,
    *,
    features: list[int],
    value: float,
    target: int,
    share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``share`` of the records get the trigger and the target label; the rest stay clean
    (so the poisoned model still does its main task and hides the backdoor)."""
    n = len(y)
    k = max(1, round(share * n)) if n else 0
    chosen = rng.choice(n, size=k, replace=False) if k else np.array([], int)
    x2, y2 = np.array(x, copy=True), np.array(y, copy=True)
    x2[chosen] = add_trigger(x2[chosen], features, value)
    y2[chosen] = target
    return x2, y2


def triggered_test_set(
    x: np.ndarray, y: np.ndarray, *, features: list[int], value: float, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Test records not already of the target class, triggered and labelled with the
    target: a model's accuracy on them is the backdoor's success rate."""
    keep = np.asarray(y) != target
    xs = add_trigger(np.asarray(x)[keep], features, value)
    return xs, np.full(int(keep.sum()), target, dtype=np.asarray(y).dtype)
