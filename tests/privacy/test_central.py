"""DP-FedAvg: the added noise has std z*C; adaptive clipping finds the target quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant
from consortia.privacy.central import (
    AdaptiveClipping,
    add_gaussian_noise,
    clip_update,
    noisy_mean,
    split_noise_multiplier,
)
from consortia.privacy.rng import SecureRng


def test_noise_std_matches_z_times_c() -> None:
    z, c, d = 1.3, 0.5, 200_000
    total = np.full(d, 2.0)
    noised = add_gaussian_noise(total, noise_multiplier=z, clip_norm=c, rng=SecureRng(seed=1))
    noise = noised - total
    # Sample std of 2e5 normals: relative standard error 1/sqrt(2d) = 0.16%; 1% is 6 sigma.
    assert noise.std() == pytest.approx(z * c, rel=0.01)
    assert abs(noise.mean()) < 5 * z * c / math.sqrt(d)


def test_noisy_mean_divides_by_expected_sites() -> None:
    updates = [np.array([3.0, 4.0]), np.array([0.3, 0.4]), np.array([0.0, -10.0])]
    clipped = [clip_update(u, 1.0) for u in updates]
    np.testing.assert_allclose(clipped[0].vector, [0.6, 0.8])
    assert [c.unclipped_bit for c in clipped] == [-0.5, 0.5, -0.5]
    total = sum(c.vector for c in clipped)
    # No noise: (0.6+0.3+0, 0.8+0.4-1) / 4 expected sites (e.g. q=0.1 of 40 sites).
    mean = noisy_mean(
        total, noise_multiplier=0.0, clip_norm=1.0, expected_sites=4.0, rng=SecureRng(seed=0)
    )
    np.testing.assert_allclose(mean, [0.225, 0.05])


def test_noisy_mean_noise_scale() -> None:
    mean = noisy_mean(
        np.zeros(100_000),
        noise_multiplier=1.0,
        clip_norm=2.0,
        expected_sites=10.0,
        rng=SecureRng(seed=3),
    )
    assert mean.std() == pytest.approx(0.2, rel=0.015)


def test_split_noise_multiplier_composes_back() -> None:
    z, sigma_b = 1.0, 5.0
    z_delta = split_noise_multiplier(z, sigma_b)
    assert z_delta == pytest.approx((1 - 1 / 100) ** -0.5)  # 1.00504
    # The two releases together are worth exactly one Gaussian(z): same RDP epsilon.
    both = PrivacyAccountant()
    both.record_gaussian(z_delta)
    both.record_gaussian(2 * sigma_b)
    one = PrivacyAccountant()
    one.record_gaussian(z)
    assert both.epsilon(1e-5)["rdp"] == pytest.approx(one.epsilon(1e-5)["rdp"], rel=1e-6)
    with pytest.raises(ConfigError, match="2 \\* count_stddev"):
        split_noise_multiplier(1.0, 0.4)


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_adaptive_clip_moves_to_target_quantile(quantile: float) -> None:
    rng = np.random.default_rng(0)
    noise_rng = SecureRng(seed=4)
    norms = rng.lognormal(mean=0.0, sigma=0.5, size=100_000)  # true quantiles known
    target = float(np.quantile(norms, quantile))
    rule = AdaptiveClipping(target_quantile=quantile, learning_rate=0.2, count_stddev=0.5)
    clip = 0.05  # far below
    for _ in range(300):
        batch = rng.choice(norms, size=100)
        bits = np.where(batch <= clip, 0.5, -0.5).sum()
        clip, _ = rule.next_clip_norm(clip, bits, expected_sites=100, rng=noise_rng)
    assert clip == pytest.approx(target, rel=0.15)


def test_adaptive_clip_direction() -> None:
    rule = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=0.0)
    # All 10 sites unclipped: b_hat = 1 > 0.5, so C shrinks by exp(-0.1).
    c, b_hat = rule.next_clip_norm(1.0, 5.0, expected_sites=10, rng=SecureRng(seed=0))
    assert b_hat == 1.0 and c == pytest.approx(math.exp(-0.1))
    c, b_hat = rule.next_clip_norm(1.0, -5.0, expected_sites=10, rng=SecureRng(seed=0))
    assert b_hat == 0.0 and c == pytest.approx(math.exp(0.1))


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="target_quantile"):
        AdaptiveClipping(target_quantile=1.0)
    with pytest.raises(ConfigError, match="expected_sites"):
        noisy_mean(
            np.zeros(2),
            noise_multiplier=1.0,
            clip_norm=1.0,
            expected_sites=0,
            rng=SecureRng(seed=0),
        )
