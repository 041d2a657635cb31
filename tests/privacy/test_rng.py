"""The ChaCha20 generator: reproducible when seeded, right moments, fast enough."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from consortia.core.errors import ConfigError
from consortia.privacy.rng import SecureRng


def test_seed_reproducible_and_distinct() -> None:
    a = SecureRng(seed=3).normal(1000)
    b = SecureRng(seed=3).normal(1000)
    c = SecureRng(seed=4).normal(1000)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert SecureRng(seed=3).seeded and not SecureRng().seeded


def test_unseeded_differs_between_instances() -> None:
    assert not np.array_equal(SecureRng().random(16), SecureRng().random(16))


def test_stream_continues_across_calls() -> None:
    r1 = SecureRng(seed=9)
    joined = np.concatenate([r1.random(5), r1.random(7)])
    np.testing.assert_array_equal(joined, SecureRng(seed=9).random(12))


def test_uniform_range_and_ks() -> None:
    u = SecureRng(seed=1).random(50_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_normal_moments_and_odd_size() -> None:
    x = SecureRng(seed=2).normal(200_001, std=3.0)
    assert x.size == 200_001
    # std of the sample std is about 3 / sqrt(2n) = 0.0047.
    assert x.std() == pytest.approx(3.0, abs=0.03)
    assert abs(x.mean()) < 0.03
    assert stats.kstest(x / 3.0, "norm").pvalue > 1e-4


def test_laplace_moments() -> None:
    x = SecureRng(seed=5).laplace(200_000, scale=2.0)
    assert x.var() == pytest.approx(8.0, rel=0.03)  # Var = 2 b^2
    assert stats.kstest(x, "laplace", args=(0, 2.0)).pvalue > 1e-4


@pytest.mark.parametrize("sigma", [0.6, 3.5, 40.0])
def test_discrete_gaussian_matches_pmf(sigma: float) -> None:
    x = SecureRng(seed=6).discrete_gaussian(100_000, sigma)
    assert x.dtype == np.int64
    support = np.arange(-int(8 * sigma) - 2, int(8 * sigma) + 3)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    expected_var = float((pmf * support**2).sum())
    assert x.var() == pytest.approx(expected_var, rel=0.03)
    assert abs(x.mean()) < 4 * np.sqrt(expected_var / x.size)
    if sigma < 5:  # exact pmf check on the small support
        counts = np.array([(x == k).sum() for k in support])
        observed = counts / x.size
        assert np.max(np.abs(observed - pmf)) < 0.01


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="seed"):
        SecureRng(seed=-1)
    with pytest.raises(ConfigError, match="std"):
        SecureRng(seed=1).normal(3, std=-1.0)
    with pytest.raises(ConfigError, match="size"):
        SecureRng(seed=1).random(-2)


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(3, 2), Fraction(10)])
def test_exact_discrete_laplace_matches_pmf(scale: Fraction) -> None:
    """Finding 10 (issue 9): analytics counts need an exact integer sampler. Lap_Z(t) has
    P(x) = tanh(a/2) exp(-a|x|), a = 1/t; a chi-square test over the bulk and both tails."""
    rng = SecureRng(seed=11)
    n = 20_000
    draws = rng.discrete_laplace_exact(n, scale)
    assert draws.dtype == np.int64
    a = 1 / float(scale)
    top = int(np.ceil(3 * float(scale))) + 1
    support = np.arange(-top, top + 1)
    pmf = np.tanh(a / 2) * np.exp(-a * np.abs(support))
    tail = (1 - pmf.sum()) / 2  # mass beyond each end, split evenly by symmetry
    observed = [np.sum(draws < -top), *[np.sum(draws == k) for k in support], np.sum(draws > top)]
    expected = n * np.array([tail, *pmf, tail])
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert abs(draws.mean()) < 5 * np.sqrt(2 * np.exp(-a) / (1 - np.exp(-a)) ** 2 / n)


def test_exact_bernoulli_exp_and_randbelow() -> None:
    """The exact pieces CKS 2020 builds on: P(Bernoulli(exp(-g)) = 1) = exp(-g), also for
    g > 1; randbelow is uniform on [0, n) for an n that is no power of two."""
    rng = SecureRng(seed=12)
    for gamma in (Fraction(1, 3), Fraction(5, 2)):
        hits = sum(rng.bernoulli_exp(gamma) for _ in range(20_000))
        p = np.exp(-float(gamma))
        assert abs(hits / 20_000 - p) < 5 * np.sqrt(p * (1 - p) / 20_000)
    values = [rng.randbelow(6) for _ in range(12_000)]
    assert set(values) == set(range(6))
    assert stats.chisquare(np.bincount(values)).pvalue > 1e-3
    with pytest.raises(ConfigError, match="scale"):
        rng.discrete_laplace_exact(3, Fraction(0))
