"""Federated analytics under DP: counts, histograms, means and quantiles across sites.

Privacy unit: one record (add/remove one record anywhere in the federation). Each site
computes a *bounded* local contribution (``local_*``; this is where contribution bounding
happens, on the site, explicitly: values are clamped to declared bounds, each record falls
in exactly one bin), the contributions are summed (in the clear here, or by secure
aggregation), and noise is added once to the sum (``release_sum``), scaled to the sum's
sensitivity. Every release records its event in the given accountant.

Counts and histograms are integers and are released with an integer mechanism: adding
float noise at full precision to an integer leaves the low-order bits of the result
depending on the true value (Mironov 2012). ``laplace(epsilon)`` then means the discrete
Laplace Lap_Z(1/epsilon), sampled exactly (Canonne, Kamath and Steinke 2020, Algorithm 2)
and accounted as dp-accounting's ``DiscreteLaplaceDpEvent``: for an integer query of
sensitivity 1 it is epsilon-DP, the same pure epsilon as the continuous Laplace of that
scale (Ghosh, Roughgarden and Sundararajan 2009, the geometric mechanism; CKS 2020 Sec. 2).
``gaussian(z)`` means the discrete Gaussian N_Z(0, z^2), accounted as (1 / (2 z^2))-zCDP
(CKS 2020, Theorem 4, and Theorem 14 for the histogram's independent coordinates). A mean's
centred sum is a float and keeps the float Laplace / Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.rng import SecureRng


@dataclass(frozen=True)
class NoiseSpec:
    """Which mechanism and how much noise, relative to the sensitivity.

    ``laplace(epsilon)``: scale = L1 sensitivity / epsilon. ``gaussian(z)``: std = z * L2
    sensitivity. ``epsilon=inf`` or ``z=0`` means no noise, recorded as a non-private
    release (epsilon becomes infinite); it exists for exact checks, never for real data.
    """

    mechanism: Literal["laplace", "gaussian"]
    parameter: float

    @classmethod
    def laplace(cls, epsilon: float) -> NoiseSpec:
        if not epsilon > 0:
            raise ConfigError(f"Laplace epsilon must be > 0, got {epsilon!r}")
        return cls("laplace", epsilon)

    @classmethod
    def gaussian(cls, noise_multiplier: float) -> NoiseSpec:
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ConfigError(f"Gaussian noise_multiplier must be >= 0, got {noise_multiplier!r}")
        return cls("gaussian", noise_multiplier)

    @property
    def is_noiseless(self) -> bool:
        return math.isinf(self.parameter) if self.mechanism == "laplace" else self.parameter == 0

    def event(self, label: str) -> PrivacyEvent:
        """The accountant event for one release with this noise."""
        if self.is_noiseless:
            return PrivacyEvent("non_private", label=label)
        multiplier = 1.0 / self.parameter if self.mechanism == "laplace" else self.parameter
        return PrivacyEvent(self.mechanism, noise_multiplier=multiplier, label=label)

    def sample(self, size: int, *, l1: float, l2: float, rng: SecureRng) -> np.ndarray:
        """Float noise for a sum with L1/L2 sensitivities ``l1``/``l2``."""
        if self.is_noiseless:
            return np.zeros(size)
        if self.mechanism == "laplace":
            return rng.laplace(size, l1 / self.parameter)
        return rng.normal(size, self.parameter * l2)

    def integer_event(self, label: str) -> PrivacyEvent:
        """The event of one integer release of sensitivity 1 (L1 and L2) with this noise."""
        if self.is_noiseless:
            return PrivacyEvent("non_private", label=label)
        if self.mechanism == "laplace":
            return PrivacyEvent(
                "discrete_laplace", noise_multiplier=1.0 / self.parameter, label=label
            )
        return PrivacyEvent("zcdp", rho=1.0 / (2.0 * self.parameter**2), label=label)

    def sample_integer(self, size: int, rng: SecureRng) -> np.ndarray:
        """Integer noise for an integer sum of sensitivity 1: Lap_Z(1/epsilon) or N_Z(0, z^2)."""
        if self.is_noiseless:
            return np.zeros(size, dtype=np.int64)
        if self.mechanism == "laplace":
            # Fraction of the float 1/epsilon is exact: the sampled scale is the accounted one.
            return rng.discrete_laplace_exact(size, Fraction(1.0 / self.parameter))
        return rng.discrete_gaussian(size, self.parameter)


def query_events(kind: str, noise: NoiseSpec, label: str) -> list[PrivacyEvent]:
    """The events one query of ``kind`` records, before it runs (for budget checks)."""
    if kind == "mean":  # a float centred sum, then an integer count
        return [noise.event(f"{label}.sum"), noise.integer_event(f"{label}.count")]
    if kind in ("count", "histogram", "quantiles"):
        return [noise.integer_event(label)]
    raise ConfigError(f"analytics: unknown query kind {kind!r}")


# ---- site side: bounded local contributions ------------------------------------------------


def local_count(values: np.ndarray) -> np.ndarray:
    """Number of records (each record contributes exactly 1)."""
    return np.array([np.asarray(values).shape[0]], dtype=np.int64)


def local_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin; values outside the edges are clamped into the end bins."""
    e = _edges(edges)
    v = np.clip(np.asarray(values, dtype=np.float64), e[0], e[-1])
    counts, _ = np.histogram(v, bins=e)
    return counts.astype(np.int64)


def local_centred_sum(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Sum of values clamped to ``bounds`` and centred on the midpoint, plus the count.

    Centring halves the sensitivity: one record moves the sum by at most (hi - lo) / 2.
    """
    lo, hi = _bounds(bounds)
    v = np.clip(np.asarray(values, dtype=np.float64), lo, hi) - (lo + hi) / 2
    return np.array([float(v.sum())])


# ---- server side --------------------------------------------------------------------------


def release_sum(
    local_results: Sequence[np.ndarray],
    *,
    l1_sensitivity: float,
    l2_sensitivity: float,
    noise: NoiseSpec,
    rng: SecureRng,
    accountant: PrivacyAccountant,
    label: str,
) -> np.ndarray:
    """Sum sites' bounded local results and add noise once; record the event first."""
    if not local_results:
        raise ConfigError(f"{label}: no site results")
    shapes = {np.asarray(r).shape for r in local_results}
    if len(shapes) != 1:
        raise ConfigError(f"{label}: sites returned different shapes {sorted(shapes)}")
    total = np.sum([np.asarray(r, dtype=np.float64) for r in local_results], axis=0)
    accountant.record(noise.event(label))
    return total + noise.sample(total.size, l1=l1_sensitivity, l2=l2_sensitivity, rng=rng)


def release_integer_sum(
    local_results: Sequence[np.ndarray],
    *,
    noise: NoiseSpec,
    rng: SecureRng,
    accountant: PrivacyAccountant,
    label: str,
) -> np.ndarray:
    """Sum sites' integer counts (one record moves them by 1 in one entry) and add integer
    noise once; record the event first. The result is an integer array."""
    if not local_results:
        raise ConfigError(f"{label}: no site results")
    arrays = [np.asarray(r) for r in local_results]
    if len({a.shape for a in arrays}) != 1:
        raise ConfigError(
            f"{label}: sites returned different shapes {sorted({a.shape for a in arrays})}"
        )
    if not all(np.issubdtype(a.dtype, np.integer) for a in arrays):
        raise ConfigError(f"{label}: site counts must be integers")
    total = np.sum([a.astype(np.int64) for a in arrays], axis=0)
    accountant.record(noise.integer_event(label))
    return total + noise.sample_integer(total.size, rng)


def dp_count(
    site_values: Sequence[np.ndarray],
    *,
    noise: NoiseSpec,
    rng: SecureRng,
    accountant: PrivacyAccountant,
) -> int:
    """Noisy total number of records across sites (sensitivity 1), an integer."""
    local = [local_count(v) for v in site_values]
    return int(
        release_integer_sum(local, noise=noise, rng=rng, accountant=accountant, label="count")[0]
    )


def dp_histogram(
    site_values: Sequence[np.ndarray],
    edges: np.ndarray,
    *,
    noise: NoiseSpec,
    rng: SecureRng,
    accountant: PrivacyAccountant,
) -> np.ndarray:
    """Noisy integer histogram over fixed ``edges`` (one record is in one bin: L1 = L2 = 1)."""
    local = [local_histogram(v, edges) for v in site_values]
    return release_integer_sum(
        local, noise=noise, rng=rng, accountant=accountant, label="histogram"
    )


def dp_mean(
    site_values: Sequence[np.ndarray],
    bounds: tuple[float, float],
    *,
    noise: NoiseSpec,
    rng: SecureRng,
    accountant: PrivacyAccountant,
) -> float:
    """Noisy mean of values clamped to ``bounds``: two releases (centred sum, count).

    Each release gets ``noise``, so the accountant records two events.
    """
    lo, hi = _bounds(bounds)
    half_range = (hi - lo) / 2
    total = release_sum(
        [local_centred_sum(v, bounds) for v in site_values],
        l1_sensitivity=half_range,
        l2_sensitivity=half_range,
        noise=noise,
        rng=rng,
        accountant=accountant,
        label="mean.sum",
    )[0]
    count = dp_count(site_values, noise=noise, rng=rng, accountant=accountant)
    mid = (lo + hi) / 2
    # A noisy count can be tiny or negative; one record is the least that makes sense.
    return float(np.clip(mid + total / max(count, 1.0), lo, hi))


def dp_quantiles(
    site_values: Sequence[np.ndarray],
    quantiles: Sequence[float],
    bounds: tuple[float, float],
    *,
    bins: int = 64,
    noise: NoiseSpec,
    rng: SecureRng,
    accountant: PrivacyAccountant,
) -> np.ndarray:
    """Quantiles from one noisy histogram over ``bounds`` (any number of quantiles, one release).

    Negative noisy counts are set to 0 and the quantile is interpolated linearly inside its
    bin, all post-processing; resolution is (hi - lo) / bins.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if np.any((q < 0) | (q > 1)):
        raise ConfigError(f"quantiles must be in [0, 1], got {list(quantiles)}")
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    lo, hi = _bounds(bounds)
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.maximum(
        dp_histogram(site_values, edges, noise=noise, rng=rng, accountant=accountant), 0
    ).astype(np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    if cdf[-1] <= 0:
        return np.full(q.shape, (lo + hi) / 2)
    cdf /= cdf[-1]
    # cdf is non-decreasing over edges; interp inverts it (flat steps take their first edge).
    return np.interp(q, cdf, edges)


def _edges(edges: np.ndarray) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ConfigError("histogram edges must be a strictly increasing 1-D array of >= 2")
    return e


def _bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"bounds must be finite with lo < hi, got {bounds!r}")
    return lo, hi
