"""Pre-aggregation steps: rows in, rows out, applied before a robust rule.

Robust rules assume honest updates look alike; on non-IID data they do not, and a rule
alone then either discards honest sites or lets attackers hide among them. These steps
shrink the honest spread first (Allouah et al. 2023, Karimireddy et al. 2022) or bound
how far any one row can pull (Allouah et al. 2024). Pure functions like the rules.
"""

from __future__ import annotations

import numpy as np

from consortia.strategy.robust.rules import RuleError, clip_scale, row_norms, squared_distances


def nearest_neighbour_mixing(x: np.ndarray, f: int) -> np.ndarray:
    """NNM: each row replaced by the mean of its n - f nearest rows (itself included)."""
    n = x.shape[0]
    if not 0 <= f < n:
        raise RuleError(f"nearest-neighbour mixing needs 0 <= f < n; got n={n}, f={f}")
    order = np.argsort(squared_distances(x), axis=1, kind="stable")[:, : n - f]
    out = np.empty(x.shape, np.float64)
    for i, neighbours in enumerate(order):
        out[i] = x[neighbours].mean(axis=0, dtype=np.float64)
    return out


def bucketing(x: np.ndarray, size: int, permutation: np.ndarray) -> np.ndarray:
    """Rows shuffled by ``permutation``, then each run of ``size`` rows averaged into one
    (the last bucket may be smaller): ceil(n / size) rows out."""
    n = x.shape[0]
    if size < 1:
        raise RuleError(f"bucketing: the bucket size must be >= 1, got {size}")
    if sorted(permutation.tolist()) != list(range(n)):
        raise RuleError("bucketing: the permutation does not cover every row once")
    shuffled = x[permutation]
    return np.stack(
        [shuffled[i : i + size].mean(axis=0, dtype=np.float64) for i in range(0, n, size)]
    )


def adaptive_robust_clipping(x: np.ndarray, f: int) -> np.ndarray:
    """ARC: the k = floor(2 (f / n) (n - f)) largest rows clipped to the norm of the largest
    row left unclipped."""
    n = x.shape[0]
    if not 0 <= f <= n:
        raise RuleError(f"adaptive robust clipping needs 0 <= f <= n; got n={n}, f={f}")
    k = int((2 * f / n) * (n - f))
    out = x.astype(np.float64)
    if k == 0:
        return out
    norms = row_norms(x)
    order = np.argsort(norms, kind="stable")
    bound = float(norms[order[n - k - 1]])
    for i in order[n - k :]:
        out[i] *= clip_scale(float(norms[i]), bound)
    return out
