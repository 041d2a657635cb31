"""Audit scores: how far each site's update sits from the round's others, per round.

Scores, for site i with update u_i in a round of n accepted updates and aggregate a:
- ``norm_z``: robust z-score of |u_i| among the round's norms, (|u_i| - median) / (1.4826
  MAD), so that the attackers themselves cannot inflate the spread that hides them (a
  plain z-score of n values can never pass (n - 1) / sqrt(n), under 3 for n = 10);
- ``cos_aggregate``: cosine similarity of u_i to the round's aggregate;
- ``cos_previous``: cosine similarity to the site's own previous update (None the first
  time the auditor sees the site);
- ``median_distance`` and its robust z-score ``median_distance_z``: |u_i - m|, m the
  coordinate-wise median of the round's updates;
- ``cos_median``: cosine similarity to m; ``cos_others``: to the mean of the other updates
  (an update is part of the aggregate it is compared with; this leaves it out);
  ``max_cos_other``: the largest cosine to any other single update;
- ``cos_last_aggregate``: cosine to the previous round's aggregate (the direction the
  model last moved; None in the auditor's first round);
- ``nearest_other``: the distance to the nearest other update, relative to this one's
  norm (colluding attackers that send one vector, and mimics, sit at 0; honest sites with
  their own data do not come within a percent of each other).

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
    """When a site-round is flagged; ``None`` leaves a score reported but never flagging.

    The defaults are what the robustness benchmark (bench/robustness.py: digits, 100 sites,
    Dirichlet 0.5, 20% colluding attackers) supports: a norm far out (robust z over 5,
    scaling) or an update within 1% of another site's (colluding attackers sending one
    vector, or a mimic), with no honest site listed. Attackers that add their own noise
    to one shared vector get past the second rule; it catches coordination, not intent.
    On such non-IID data the honest updates are nearly orthogonal to each other, so the
    cosines to the aggregate, the others or the median separate a lone sign-flipper from
    honest sites only weakly; they are reported, and a job may set thresholds for them.
    """

    max_norm_z: float | None = 5.0
    min_nearest_other: float | None = 0.01
    max_cos_other: float | None = None
    min_cos_aggregate: float | None = None
    min_cos_others: float | None = None
    min_cos_last_aggregate: float | None = None
    max_median_distance_z: float | None = None
    min_cos_previous: float | None = None


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 MAD); a spread of zero counts as a tiny one."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * _MAD_TO_SIGMA
    scale = max(mad, 1e-12 * max(abs(med), 1.0))
    return (values - med) / scale


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


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
    last_aggregate: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row of scores per update (row of ``x``), in order."""
    n = x.shape[0]
    g = gram(x)
    norms = np.sqrt(np.diag(g))
    # Leave-one-out: each update against the mean of the others (from the Gram matrix), so
    # that an update is not compared with an aggregate it is part of.
    row_sums, total = g.sum(axis=1), g.sum()
    dot_others = row_sums - np.diag(g)
    norm_others = np.sqrt(np.maximum(total - 2 * row_sums + np.diag(g), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        pair_cos = g / np.outer(norms, norms)
    np.fill_diagonal(pair_cos, -np.inf)
    sq = np.diag(g)
    pair_dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * g, 0.0))
    np.fill_diagonal(pair_dist, np.inf)
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
                "cos_others": _ratio(dot_others[i], norms[i] * norm_others[i]),
                "cos_last_aggregate": None
                if last_aggregate is None
                else _cosine(x[i].astype(np.float64), last_aggregate),
                "max_cos_other": float(np.nan_to_num(pair_cos[i]).max()) if n > 1 else None,
                "nearest_other": _ratio(float(pair_dist[i].min()), float(norms[i]))
                if n > 1
                else None,
                "cos_previous": None if prev is None else _cosine(sketches[i], prev),
                "cos_median": _cosine(x[i].astype(np.float64), med),
                "median_distance": float(dist[i]),
                "median_distance_z": float(dz[i]),
            }
        )
    return out


_ABOVE: tuple[tuple[str, str], ...] = (
    ("norm_z", "max_norm_z"),
    ("max_cos_other", "max_cos_other"),
    ("median_distance_z", "max_median_distance_z"),
)
_BELOW: tuple[tuple[str, str], ...] = (
    ("nearest_other", "min_nearest_other"),
    ("cos_aggregate", "min_cos_aggregate"),
    ("cos_others", "min_cos_others"),
    ("cos_last_aggregate", "min_cos_last_aggregate"),
    ("cos_previous", "min_cos_previous"),
)


def reasons(row: dict[str, Any], t: AuditThresholds) -> list[str]:
    """Which thresholds a site-round's scores pass (empty: not flagged)."""
    out = []
    for score, limit in _ABOVE:
        bound, value = getattr(t, limit), row.get(score)
        if bound is not None and value is not None and value > bound:
            out.append(score)
    for score, limit in _BELOW:
        bound, value = getattr(t, limit), row.get(score)
        if bound is not None and value is not None and value < bound:
            out.append(score)
    return out


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a score is written as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None
