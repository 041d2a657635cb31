"""DP analytics: exact answers when noise is off, stated noise scale, events recorded."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event, pld, rdp

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant, pld_interval
from consortia.privacy.analytics import (
    NoiseSpec,
    dp_count,
    dp_histogram,
    dp_mean,
    dp_quantiles,
    local_centred_sum,
)
from consortia.privacy.rng import SecureRng

SITES = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0]), np.array([100.0])]
OFF = NoiseSpec.gaussian(0.0)


def test_noiseless_answers_by_hand() -> None:
    acc, rng = PrivacyAccountant(), SecureRng(seed=0)
    assert dp_count(SITES, noise=OFF, rng=rng, accountant=acc) == 6.0
    hist = dp_histogram(SITES, np.array([0.0, 2.5, 5.0, 10.0]), noise=OFF, rng=rng, accountant=acc)
    np.testing.assert_array_equal(hist, [2, 2, 2])  # {1,2} {3,4} {5, 100 clamped to 10}
    # bounds (0, 10): 100 -> 10; mean of 1,2,3,4,5,10 = 25/6.
    assert dp_mean(SITES, (0.0, 10.0), noise=OFF, rng=rng, accountant=acc) == pytest.approx(25 / 6)
    # noise off is honest about it: epsilon is infinite.
    assert [e.mechanism for e in acc.events] == ["non_private"] * 4
    assert math.isinf(acc.epsilon(1e-5)["rdp"])  # type: ignore[arg-type]


def test_centred_sum_bounds_one_records_effect() -> None:
    # bounds (0, 10): each record contributes clamp(x) - 5, in [-5, 5].
    assert local_centred_sum(np.array([0.0, 10.0, 20.0, -3.0]), (0.0, 10.0))[0] == -5 + 5 + 5 - 5


def test_noiseless_quantiles() -> None:
    values = [np.arange(0.5, 50.0), np.arange(50.5, 100.0)]  # 100 values, one per unit bin
    qs = dp_quantiles(
        values,
        [0.1, 0.5, 0.9],
        (0.0, 100.0),
        bins=100,
        noise=OFF,
        rng=SecureRng(seed=0),
        accountant=PrivacyAccountant(),
    )
    np.testing.assert_allclose(qs, [10.0, 50.0, 90.0])


def test_laplace_count_is_an_integer_with_discrete_laplace_noise_and_event() -> None:
    """Finding 10 (issue 9): a count is released with integer noise, Lap_Z(1/epsilon), and
    accounted as dp-accounting's discrete Laplace (float Laplace on an integer leaks the
    true value through the low-order bits, Mironov 2012)."""
    acc, rng = PrivacyAccountant(), SecureRng(seed=1)
    eps = 0.5
    draws = [
        dp_count(SITES, noise=NoiseSpec.laplace(eps), rng=rng, accountant=acc) for _ in range(4000)
    ]
    assert all(isinstance(d, int) for d in draws)
    noise = np.array(draws) - 6
    # Lap_Z(t = 2): variance 2 e^(-1/t) / (1 - e^(-1/t))^2 = 7.83.
    var = 2 * math.exp(-0.5) / (1 - math.exp(-0.5)) ** 2
    assert noise.var() == pytest.approx(var, rel=0.15)
    assert abs(noise.mean()) < 5 * math.sqrt(var / 4000)
    assert acc.events[0].mechanism == "discrete_laplace" and acc.events[0].noise_multiplier == 2.0
    # One release is 0.5-DP (pure), and our figure is dp-accounting's own for the event.
    ours = PrivacyAccountant(acc.events[:1]).epsilon(1e-6)
    # The PLD grid is sized from the RDP figure (a coarser pessimistic grid is still valid).
    direct = pld.PLDAccountant(value_discretization_interval=pld_interval(ours["rdp"]))
    direct.compose(dp_event.DiscreteLaplaceDpEvent(noise_parameter=0.5, sensitivity=1))
    assert ours["pld"] == pytest.approx(direct.get_epsilon(1e-6), rel=1e-9)
    assert ours["pld"] == pytest.approx(0.5, abs=1e-3)
    # RDP does not take the discrete Laplace: it gets the (eps^2 / 2)-zCDP every eps-DP
    # mechanism satisfies (Bun and Steinke 2016), a valid but looser bound.
    zcdp = rdp.RdpAccountant()
    zcdp.compose(dp_accounting.ZCDpEvent(rho=0.5**2 / 2))
    assert ours["rdp"] == pytest.approx(zcdp.get_epsilon(1e-6), rel=1e-9)
    assert ours["best"] == ours["pld"] < ours["rdp"]


def test_gaussian_histogram_is_integer_and_accounted_as_discrete_gaussian_zcdp() -> None:
    """Finding 10 (issue 9): Gaussian counts are discrete Gaussian N_Z(0, z^2), accounted as
    (1 / 2z^2)-zCDP (Canonne, Kamath, Steinke 2020, Thm. 4), checked against dp-accounting."""
    acc, rng = PrivacyAccountant(), SecureRng(seed=4)
    hist = dp_histogram(
        SITES,
        np.array([0.0, 2.5, 5.0, 10.0]),
        noise=NoiseSpec.gaussian(2.0),
        rng=rng,
        accountant=acc,
    )
    assert hist.dtype == np.int64
    (event,) = acc.events
    assert event.mechanism == "zcdp" and event.rho == pytest.approx(1 / 8)
    direct = rdp.RdpAccountant()
    direct.compose(dp_accounting.ZCDpEvent(rho=1 / 8))
    assert acc.epsilon(1e-5)["rdp"] == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)


def test_gaussian_histogram_noise_scale() -> None:
    rng = SecureRng(seed=2)
    edges = np.linspace(0, 10, 2001)
    hist = dp_histogram(
        SITES, edges, noise=NoiseSpec.gaussian(3.0), rng=rng, accountant=PrivacyAccountant()
    )
    exact = dp_histogram(SITES, edges, noise=OFF, rng=rng, accountant=PrivacyAccountant())
    assert (hist - exact).std() == pytest.approx(3.0, rel=0.1)  # 2000 bins: se 1.6%


def test_mean_records_two_events_and_is_close() -> None:
    rng, acc = SecureRng(seed=3), PrivacyAccountant()
    data = [np.random.default_rng(i).uniform(0, 1, 5000) for i in range(4)]
    m = dp_mean(data, (0.0, 1.0), noise=NoiseSpec.laplace(1.0), rng=rng, accountant=acc)
    assert len(acc.events) == 2
    # 20_000 records: sum noise scale 0.5, count noise scale 1 -> error ~ 1e-4.
    assert m == pytest.approx(np.mean(np.concatenate(data)), abs=0.002)


def test_bad_inputs() -> None:
    acc, rng = PrivacyAccountant(), SecureRng(seed=0)
    with pytest.raises(ConfigError, match="bounds"):
        dp_mean(SITES, (1.0, 1.0), noise=OFF, rng=rng, accountant=acc)
    with pytest.raises(ConfigError, match="edges"):
        dp_histogram(SITES, np.array([1.0, 0.0]), noise=OFF, rng=rng, accountant=acc)
    with pytest.raises(ConfigError, match="quantiles"):
        dp_quantiles(SITES, [1.5], (0, 1), noise=OFF, rng=rng, accountant=acc)
    with pytest.raises(ConfigError, match="no site results"):
        dp_count([], noise=OFF, rng=rng, accountant=acc)
    with pytest.raises(ConfigError, match="epsilon"):
        NoiseSpec.laplace(0.0)
