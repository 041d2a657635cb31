"""Distributed discrete Gaussian: decoded sums are right, noise is as stated, dropouts cost."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant
from consortia.privacy.distributed import DistributedDiscreteGaussian, choose_scale, modular_sum
from consortia.privacy.rng import SecureRng


def _params(**kw: float) -> DistributedDiscreteGaussian:
    base: dict = dict(
        clip_norm=1.0, scale=200.0, bits=24, noise_multiplier=1.0, min_sites=10, dimension=2000
    )
    base.update(kw)
    return DistributedDiscreteGaussian(**base)


def test_sensitivity_hand_numbers() -> None:
    p = _params(scale=100.0, dimension=400)
    # gamma C = 100, d = 400: min(100^2 + 100 + sqrt(1) (100 + 10), (100 + 20)^2) = 10210.
    assert p.l2_sensitivity() == pytest.approx(math.sqrt(10210))
    assert p.l1_sensitivity() == pytest.approx(20 * math.sqrt(10210))
    assert p.site_sigma() == pytest.approx(math.sqrt(10210) / math.sqrt(10))


def test_decoded_sum_matches_true_sum_with_expected_variance() -> None:
    p = _params()
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.01, p.dimension) for _ in range(10)]  # norms ~0.45 < C
    noise_rng = SecureRng(seed=1)
    encoded = [p.encode(u, noise_rng) for u in updates]
    assert all(e.dtype == np.uint64 and e.max() < 2**24 for e in encoded)
    decoded = p.decode(modular_sum(encoded, p.bits))
    residual = (decoded - np.sum(updates, axis=0)) * p.scale  # integer units
    scaled = np.array(updates) * p.scale
    rounding_var = np.sum((scaled - np.floor(scaled)) * (np.ceil(scaled) - scaled), axis=0)
    expected_var = 10 * p.site_sigma() ** 2 + rounding_var.mean()
    # 2000 coordinates: relative standard error of a variance is sqrt(2/2000) = 3.2%.
    assert residual.var() == pytest.approx(expected_var, rel=0.12)
    assert abs(residual.mean()) < 5 * math.sqrt(expected_var / p.dimension)
    # Noise std is z * Delta_2 with min_sites contributing.
    assert math.sqrt(10 * p.site_sigma() ** 2) == pytest.approx(p.l2_sensitivity())


def test_wraparound_of_negative_values() -> None:
    p = _params(noise_multiplier=1e-3, scale=1000.0, dimension=4, min_sites=1, bits=16)
    vec = np.array([-0.5, 0.5, -0.25, 0.0])
    encoded = p.encode(vec, SecureRng(seed=2))
    assert encoded[0] > 2**15  # negative values wrap to the top of the ring
    np.testing.assert_allclose(p.decode(encoded), vec, atol=0.01)


def test_conditional_rounding_bounds_the_norm_and_is_unbiased() -> None:
    p = _params(dimension=1000, scale=50.0)
    vec = np.full(1000, 1.0 / math.sqrt(1000))  # norm exactly C; 50/sqrt(1000) = 1.58 each
    rng = SecureRng(seed=3)
    draws = np.array([p.quantize(vec, rng) for _ in range(200)])
    assert set(np.unique(draws)) == {1, 2}
    assert np.linalg.norm(draws, axis=1).max() <= p.l2_sensitivity()
    # Unbiased: the mean over 200 x 1000 draws is 1.5811 (sd of the mean 0.001).
    assert draws.mean() == pytest.approx(50 / math.sqrt(1000), abs=0.01)


def test_rho_with_all_sites_is_gaussian_like_and_single_site_exact() -> None:
    p = _params()
    # With min_sites contributing, the sum's noise std is z Delta_2: rho ~ 1/(2 z^2) = 0.5.
    assert p.rho(10) == pytest.approx(0.5, rel=1e-6)
    # One site: tau = 0, rho = Delta_2^2 / (2 sigma^2) = 10 / 2 = 5 (discrete Gaussian zCDP).
    assert p.rho(1) == pytest.approx(5.0)


def test_dropouts_raise_epsilon() -> None:
    p = _params()
    rhos = [p.rho(n) for n in (3, 6, 10)]
    assert rhos[0] > rhos[1] > rhos[2]
    eps = []
    for survivors in (6, 10):
        acc = PrivacyAccountant()
        acc.record(p.privacy_event(survivors, count=20))
        result = acc.epsilon(1e-5)
        assert result["pld"] is None  # PLD does not take zCDP events
        eps.append(result["rdp"])
    assert eps[0] > eps[1]
    # 20 rounds of rho = 0.5: zCDP rho_total = 10; RDP conversion gives about
    # rho + 2 sqrt(rho log(1/delta)) = 10 + 2 sqrt(10 * 11.51) = 31.5 (upper bound).
    assert 25 < eps[1] < 31.6


def test_choose_scale_prevents_overflow() -> None:
    kw = dict(
        clip_norm=1.0, bits=20, max_sites=30, noise_multiplier=1.0, min_sites=10, dimension=50
    )
    scale = choose_scale(**kw)  # type: ignore[arg-type]
    p = DistributedDiscreteGaussian(1.0, scale, 20, 1.0, 10, 50)
    worst = np.zeros(50)
    worst[0] = 1.0  # all the norm in one coordinate
    rng = SecureRng(seed=5)
    decoded = p.decode(modular_sum([p.encode(worst, rng) for _ in range(30)], 20))
    assert decoded[0] == pytest.approx(30.0, abs=8 * p.site_sigma() * math.sqrt(30) / scale)
    with pytest.raises(ConfigError, match="bits cannot hold"):
        choose_scale(**{**kw, "bits": 4})  # type: ignore[arg-type]


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="1/2"):
        _params(noise_multiplier=1e-6, scale=1.0, dimension=1)
    with pytest.raises(ConfigError, match="shape"):
        _params().encode(np.zeros(3), SecureRng(seed=0))
    with pytest.raises(ConfigError, match="surviving_sites"):
        _params().rho(0)
