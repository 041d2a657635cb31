"""Poisson sampling selects each site with the stated probability, independently."""

from __future__ import annotations

import numpy as np
import pytest

from consortia.core.errors import ConfigError
from consortia.privacy.rng import SecureRng
from consortia.privacy.sampling import poisson_sample


def test_empirical_rate_matches_q() -> None:
    rng = SecureRng(seed=11)
    sites = [f"site-{i}" for i in range(100)]
    q, rounds = 0.1, 2000
    per_site = np.zeros(100)
    sizes = []
    for _ in range(rounds):
        chosen = poisson_sample(sites, q, rng)
        sizes.append(len(chosen))
        for s in chosen:
            per_site[int(s.split("-")[1])] += 1
    # 200_000 Bernoulli(0.1) trials: std of the rate is sqrt(0.09 / 2e5) = 0.00067.
    assert np.mean(sizes) / 100 == pytest.approx(q, abs=4 * 0.00067)
    # Binomial(100, 0.1) round sizes: variance 9 (not fixed-size sampling).
    assert np.var(sizes) == pytest.approx(9.0, rel=0.15)
    # Every site is sampled at the same rate: per-site counts ~ Binomial(2000, 0.1), sd 13.4.
    assert np.all(np.abs(per_site - 200) < 6 * 13.4)


def test_order_kept_and_edge_rates() -> None:
    sites = ["a", "b", "c", "d"]
    assert poisson_sample(sites, 1.0, SecureRng(seed=1)) == sites
    chosen = poisson_sample(sites, 0.5, np.random.default_rng(0))
    assert chosen == [s for s in sites if s in chosen]
    assert poisson_sample([], 0.3, SecureRng(seed=1)) == []


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_bad_rate(rate: float) -> None:
    with pytest.raises(ConfigError, match="sampling rate"):
        poisson_sample(["a"], rate, SecureRng(seed=1))
