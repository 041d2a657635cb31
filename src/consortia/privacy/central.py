"""Central DP: DP-FedAvg (McMahan et al. 2018) with fixed or adaptive clipping (Andrew et al. 2021).

Site side: clip the update delta to L2 norm C (``clip_update``), and with adaptive clipping
also report the centred bit ``b - 1/2`` where ``b = 1`` if the norm was <= C.

Server side: sum the clipped updates, add N(0, (z C)^2) per coordinate once, and divide by the
*expected* number of sites ``q * N`` (``noisy_mean``). Why not divide by the number that
replied? With Poisson sampling that number is itself random and depends on who took part, so
dividing by it makes one site's influence data-dependent; McMahan et al.'s fixed-denominator
estimator keeps the sensitivity of the mean at exactly C / (q N), which is what the Gaussian
event ``(z, q)`` in the accountant assumes. The estimator is unbiased for the mean of all
sites' clipped updates (weights are uniform: a site is the privacy unit, and example counts
would leak and break the sensitivity bound).

Adaptive clipping: C <- C * exp(-eta * (b_hat - gamma)) with b_hat the noised fraction of
unclipped sites and gamma the target quantile. The count query is a second Gaussian release
with sensitivity 1/2 and noise sigma_b, i.e. multiplier 2 sigma_b. Two Gaussian releases
compose like one with z^-2 = z_delta^-2 + (2 sigma_b)^-2 (Andrew et al., Sec. 3), so to spend
the same privacy as a fixed-clip round with multiplier z, the update itself is noised with
z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) and the accountant records one Gaussian(z) event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from consortia.core.errors import ConfigError
from consortia.privacy.clip import l2_clip
from consortia.privacy.rng import SecureRng


@dataclass(frozen=True)
class ClippedUpdate:
    """A site's clipped update, its norm before clipping, and the adaptive-clipping bit."""

    vector: np.ndarray
    norm: float
    unclipped_bit: float  # b - 1/2: +0.5 if norm <= C else -0.5 (sensitivity 1/2)


def clip_update(update: np.ndarray, clip_norm: float) -> ClippedUpdate:
    """Site side of DP-FedAvg: clip to ``clip_norm`` and compute the centred indicator."""
    clipped, norm = l2_clip(update, clip_norm)
    return ClippedUpdate(clipped, norm, 0.5 if norm <= clip_norm else -0.5)


def noise_stddev(noise_multiplier: float, clip_norm: float) -> float:
    """Per-coordinate std of the Gaussian noise added to the sum: z * C."""
    _positive("noise_multiplier", noise_multiplier, allow_zero=True)
    _positive("clip_norm", clip_norm)
    return noise_multiplier * clip_norm


def add_gaussian_noise(
    total: np.ndarray, *, noise_multiplier: float, clip_norm: float, rng: SecureRng
) -> np.ndarray:
    """Return ``total + N(0, (z C)^2 I)``: the Gaussian mechanism on a sum of clipped vectors."""
    v = np.asarray(total, dtype=np.float64)
    if v.ndim != 1:
        raise ConfigError(f"expected a flat 1-D sum, got shape {v.shape}")
    std = noise_stddev(noise_multiplier, clip_norm)
    return v + rng.normal(v.size, std) if std > 0 else v.copy()


def noisy_mean(
    total: np.ndarray,
    *,
    noise_multiplier: float,
    clip_norm: float,
    expected_sites: float,
    rng: SecureRng,
) -> np.ndarray:
    """DP-FedAvg server step: (sum of clipped updates + noise) / expected number of sites.

    ``expected_sites`` is ``q * N`` (sampling rate times the number of eligible sites).
    """
    _positive("expected_sites", expected_sites)
    noised = add_gaussian_noise(
        total, noise_multiplier=noise_multiplier, clip_norm=clip_norm, rng=rng
    )
    return noised / expected_sites


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's share of a round's privacy.

    Needs ``2 * count_stddev > noise_multiplier``: otherwise the count query alone would
    spend more than the whole round's budget.
    """
    _positive("noise_multiplier", noise_multiplier)
    _positive("count_stddev", count_stddev)
    rest = noise_multiplier**-2 - (2.0 * count_stddev) ** -2
    if rest <= 0:
        raise ConfigError(
            f"count_stddev {count_stddev} too small for noise_multiplier {noise_multiplier}: "
            f"adaptive clipping needs 2 * count_stddev > noise_multiplier"
        )
    return rest**-0.5


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al. 2021 geometric update of the clip norm towards a quantile of the norms.

    ``target_quantile`` is gamma (0.5 = median of update norms), ``learning_rate`` is eta
    (0.2 in the paper), ``count_stddev`` is sigma_b (the paper suggests expected_sites / 20).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        _positive("learning_rate", self.learning_rate)
        _positive("count_stddev", self.count_stddev, allow_zero=True)

    def next_clip_norm(
        self,
        clip_norm: float,
        bits_sum: float,
        *,
        expected_sites: float,
        rng: SecureRng,
    ) -> tuple[float, float]:
        """Return ``(new_clip_norm, b_hat)`` from the sum of the sites' centred bits.

        b_hat = (sum(b_i - 1/2) + N(0, sigma_b^2)) / expected_sites + 1/2.
        """
        _positive("clip_norm", clip_norm)
        _positive("expected_sites", expected_sites)
        noise = float(rng.normal(1, self.count_stddev)[0]) if self.count_stddev > 0 else 0.0
        b_hat = (bits_sum + noise) / expected_sites + 0.5
        return clip_norm * math.exp(-self.learning_rate * (b_hat - self.target_quantile)), b_hat


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be finite and {bound}, got {value!r}")
