"""Audit scores: how far each site's update sits from the round's others, per round.

Scores, for site i with update u_i in a round of n accepted updates and aggregate a:
- ``norm_z``: robust z-score of |u_i| among the round's norms, (|u_i| - median) / (1.4826
  MAD), so that the attackers themselves cannot inflate the spread that hides them (a
  plain z-score of n values can never pass (n - 1) / sqrt(n), under 3 for n = 10);
- ``cos_aggregate``: cosine similarity of u_i to the round's aggregate;
- ``cos_previous``: cosine similarity to the site's own previous update (None the first
  time the auditor sees the site);
- ``median_distance`` and its robust z-score ``median_distance_z``: |u_i - m|, m the
  coordinate-wise median of the round's updates.

A site-round is flagged when a score passes its threshold (``AuditThresholds``); the run
summary lists a site when it was flagged in at least ``site_share`` of its audited rounds.

Memory: the audit needs the round's updates (n x d) whatever the aggregator, and keeps one
sketch per site for ``cos_previous``: the update itself when d <= ``SKETCH``, else a
count sketch of ``SKETCH`` values (inner products preserved in expectation, Charikar et
al. 2002), so a large model costs ``SKETCH`` floats per site, not a model per site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.strategy.robust.rules import gram

SKETCH = 4096
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class AuditThresholds:
    max_norm_z: float = 3.5
    min_cos_aggregate: float = 0.0
    max_median_distance_z: float = 3.5
    min_cos_previous: float | None = None  # off by default: honest non-IID updates turn


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 MAD); a spread of zero counts as a tiny one."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * _MAD_TO_SIGMA
    scale = max(mad, 1e-12 * max(abs(med), 1.0))
    return (values - med) / scale


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass
class Sketcher:
    """A site's update reduced to at most ``SKETCH`` values for ``cos_previous``."""

    size: int
    seed: int = 0
    _hash: np.ndarray | None = field(default=None, repr=False)
    _sign: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, update: np.ndarray) -> np.ndarray:
        u = np.asarray(update, np.float64)
        if self.size <= SKETCH:
            return u.copy()
        if self._hash is None or self._sign is None:
            rng = np.random.default_rng([self.seed, self.size])
            self._hash = rng.integers(0, SKETCH, self.size, dtype=np.int32)
            self._sign = rng.choice(np.array([-1.0, 1.0]), self.size)
        return np.bincount(self._hash, weights=self._sign * u, minlength=SKETCH)


def scores(
    x: np.ndarray,
    aggregate: np.ndarray,
    previous: list[np.ndarray | None],
    sketches: list[np.ndarray],
) -> list[dict[str, Any]]:
    """One row of scores per update (row of ``x``), in order."""
    n = x.shape[0]
    g = gram(x)
    norms = np.sqrt(np.diag(g))
    med = np.median(x, axis=0)
    dist = np.sqrt(np.maximum(((x.astype(np.float64) - med) ** 2).sum(axis=1), 0.0))
    nz, dz = robust_z(norms), robust_z(dist)
    agg = np.asarray(aggregate, np.float64)
    out = []
    for i in range(n):
        prev = previous[i]
        out.append(
            {
                "norm": float(norms[i]),
                "norm_z": float(nz[i]),
                "cos_aggregate": _cosine(x[i].astype(np.float64), agg),
                "cos_previous": None if prev is None else _cosine(sketches[i], prev),
                "median_distance": float(dist[i]),
                "median_distance_z": float(dz[i]),
            }
        )
    return out


def reasons(row: dict[str, Any], t: AuditThresholds) -> list[str]:
    """Which thresholds a site-round's scores pass (empty: not flagged)."""
    out = []
    if row["norm_z"] > t.max_norm_z:
        out.append("norm_z")
    if row["cos_aggregate"] < t.min_cos_aggregate:
        out.append("cos_aggregate")
    if row["median_distance_z"] > t.max_median_distance_z:
        out.append("median_distance_z")
    prev = row["cos_previous"]
    if t.min_cos_previous is not None and prev is not None and prev < t.min_cos_previous:
        out.append("cos_previous")
    return out


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a score is written as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None
