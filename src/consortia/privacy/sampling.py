"""Poisson sampling of sites: each site joins a round independently with probability q.

The accountant's amplification-by-sampling bound (``PoissonSampledDpEvent``) holds only if
this is the sampling that actually happens, with randomness the adversary cannot predict;
so the caller passes the generator explicitly (``SecureRng`` when deployed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from consortia.core.errors import ConfigError
from consortia.privacy.rng import UniformSource

T = TypeVar("T")


def poisson_sample(sites: Sequence[T], rate: float, rng: UniformSource) -> list[T]:
    """Return the sites selected this round, in their original order.

    The number selected is random (Binomial(n, rate)) and may be zero; DP-FedAvg's estimator
    divides by the *expected* count ``rate * n`` so that this is still well defined.
    """
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"sampling rate must be in (0, 1], got {rate!r}")
    if len(sites) == 0:
        return []
    if rate == 1.0:
        return list(sites)
    draws = rng.random(len(sites))
    return [site for site, u in zip(sites, draws, strict=True) if u < rate]
