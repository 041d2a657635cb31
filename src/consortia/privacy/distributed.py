"""Distributed DP in secure aggregation's integer domain: the distributed discrete Gaussian.

Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML 2021. Each site, on its own device:

1. clips its update to L2 norm C (float domain);
2. scales by ``scale`` (gamma) and rounds each coordinate randomly up or down (unbiased),
   repeating the rounding until the integer vector's norm is at most Delta_2 ("conditional
   randomised rounding"), so the integer-domain sensitivity is a hard bound;
3. adds discrete Gaussian noise N_Z(0, sigma^2) per coordinate: its share of the total;
4. reduces modulo 2**bits, the ring secure aggregation sums in.

The server only ever sees (via secure aggregation) the modular sum, which it maps back to the
centred range and divides by the scale. Nobody sees an un-noised sum.

Why the discrete Gaussian and not Skellam (Agarwal et al. 2021)? Both work; the discrete
Gaussian sampler needs only uniforms (rejection from a discrete Laplace), so all its
randomness comes from our ChaCha20 generator, while Skellam needs Poisson variates that we
would have to build from uniforms by hand.

Privacy (Kairouz et al., Theorem 1 with Proposition 14's sum): the sum of n independent
N_Z(0, sigma^2), sigma >= 1/2, added to an integer vector of L1/L2 sensitivity Delta_1 /
Delta_2 in dimension d, satisfies (1/2) eps^2 - concentrated DP with

    eps = min( sqrt(Delta_2^2 / (n sigma^2) + tau d / 2),  Delta_2 / (sqrt(n) sigma) + tau Delta_1 )
    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)).

Dropouts: each site adds sigma^2 = (z Delta_2)^2 / min_sites, sized for ``min_sites``
survivors. If only n < min_sites sites survive to contribute, the sum carries less noise and
``rho(n)`` is larger; the accountant must be given the n that actually contributed.

Sampling: dp-accounting has no Poisson-amplification bound for zCDP, so these rounds are
accounted without amplification (sample rate 1): a valid, conservative upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyEvent, rdp_epsilon, solve_noise_multiplier
from consortia.privacy.clip import l2_clip
from consortia.privacy.rng import SecureRng

_MAX_ROUNDING_TRIES = 1000


@dataclass(frozen=True)
class DistributedDiscreteGaussian:
    """Parameters shared by every site and the server for one job.

    ``noise_multiplier`` (z) is relative to the integer-domain L2 sensitivity: when
    ``min_sites`` sites contribute, the sum's noise std is z * Delta_2.
    """

    clip_norm: float
    scale: float
    bits: int
    noise_multiplier: float
    min_sites: int
    dimension: int
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        for name in ("clip_norm", "scale", "noise_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"distributed DP: {name} must be finite and > 0, got {value!r}")
        if not 2 <= self.bits <= 62:
            raise ConfigError(f"distributed DP: bits must be in [2, 62], got {self.bits}")
        if self.min_sites < 1 or self.dimension < 1:
            raise ConfigError("distributed DP: min_sites and dimension must be >= 1")
        if not 0 < self.beta < 1:
            raise ConfigError(f"distributed DP: beta must be in (0, 1), got {self.beta}")
        if self.site_sigma() < 0.5:
            raise ConfigError(
                f"distributed DP: per-site sigma {self.site_sigma():.3f} < 1/2 (the theorem's "
                "condition); raise scale or noise_multiplier, or lower min_sites"
            )

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def l2_sensitivity(self) -> float:
        """Delta_2: bound on the rounded integer vector's L2 norm (Kairouz et al., Thm. 2)."""
        cg, d = self.clip_norm * self.scale, self.dimension
        concentrated = (
            cg**2 + d / 4 + math.sqrt(2 * math.log(1 / self.beta)) * (cg + math.sqrt(d) / 2)
        )
        return math.sqrt(min(concentrated, (cg + math.sqrt(d)) ** 2))

    def l1_sensitivity(self) -> float:
        """Delta_1 <= min(Delta_2^2, sqrt(d) Delta_2): integer entries have |x| <= x^2."""
        d2 = self.l2_sensitivity()
        return min(d2**2, math.sqrt(self.dimension) * d2)

    def site_sigma(self) -> float:
        """Each site's discrete Gaussian sigma, so min_sites of them sum to std z * Delta_2."""
        return self.noise_multiplier * self.l2_sensitivity() / math.sqrt(self.min_sites)

    def quantize(self, update: np.ndarray, rng: SecureRng) -> np.ndarray:
        """Clip, scale and conditionally round to integers (unbiased up to the conditioning).

        The result's L2 norm is at most ``l2_sensitivity()``, always.
        """
        v = np.asarray(update, dtype=np.float64)
        if v.shape != (self.dimension,):
            raise ConfigError(f"distributed DP: update shape {v.shape} != ({self.dimension},)")
        clipped, _ = l2_clip(v, self.clip_norm)
        scaled = clipped * self.scale
        floor = np.floor(scaled)
        frac = scaled - floor
        bound = self.l2_sensitivity()
        for _ in range(_MAX_ROUNDING_TRIES):
            rounded = floor + (rng.random(self.dimension) < frac)
            if np.linalg.norm(rounded) <= bound:
                break
        else:  # probability <= beta ** 1000: only reachable with inconsistent parameters
            raise ConfigError("distributed DP: conditional rounding did not meet the norm bound")
        return rounded.astype(np.int64)

    def encode(self, update: np.ndarray, rng: SecureRng) -> np.ndarray:
        """Site side: quantize, add this site's noise share, wrap modulo 2**bits."""
        noisy = self.quantize(update, rng) + rng.discrete_gaussian(
            self.dimension, self.site_sigma()
        )
        return np.mod(noisy, self.modulus).astype(np.uint64)

    def decode(self, modular_sum: np.ndarray) -> np.ndarray:
        """Server side: map the modular sum to [-2**(bits-1), 2**(bits-1)) and unscale."""
        s = np.asarray(modular_sum)
        if s.shape != (self.dimension,):
            raise ConfigError(f"distributed DP: sum shape {s.shape} != ({self.dimension},)")
        m = self.modulus
        centred = np.mod(s.astype(np.int64), m)
        centred = np.where(centred >= m // 2, centred - m, centred)
        return centred.astype(np.float64) / self.scale

    def rho(self, surviving_sites: int) -> float:
        """zCDP rho of one round in which ``surviving_sites`` sites added their noise."""
        if surviving_sites < 1:
            raise ConfigError(
                f"distributed DP: surviving_sites must be >= 1, got {surviving_sites}"
            )
        n, sigma, d = surviving_sites, self.site_sigma(), self.dimension
        d1, d2 = self.l1_sensitivity(), self.l2_sensitivity()
        k = np.arange(1, n)
        tau = 10.0 * float(np.sum(np.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1))))
        eps = min(
            math.sqrt(d2**2 / (n * sigma**2) + tau * d / 2),
            d2 / (math.sqrt(n) * sigma) + tau * d1,
        )
        return eps**2 / 2

    def worst_rho(self, max_sites: int) -> float:
        """The largest ``rho(n)`` over every released round, n = min_sites .. max_sites.

        rho(n) mostly falls as more noise shares arrive, but tau (the discrete Gaussian's
        distance from a continuous one) grows with n; calibration takes the worst, so no
        round can cost more than the calibration assumed.
        """
        return max(self.rho(n) for n in range(self.min_sites, max(self.min_sites, max_sites) + 1))

    def privacy_event(self, surviving_sites: int, count: int = 1, label: str = "") -> PrivacyEvent:
        """The accountant event for ``count`` rounds with ``surviving_sites`` contributors."""
        return PrivacyEvent(
            "zcdp", rho=self.rho(surviving_sites), count=count, label=label or "ddgauss"
        )


def modular_sum(vectors: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """Sum of encoded vectors modulo 2**bits: what secure aggregation hands the server."""
    if not vectors:
        raise ConfigError("modular_sum: no vectors")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint64))
    mask = np.uint64((1 << bits) - 1)
    for v in vectors:
        total = (total + np.asarray(v, dtype=np.uint64)) & mask  # uint64 wraps; 2**bits divides
    return total


def calibrate_distributed(
    target_epsilon: float,
    delta: float,
    rounds: int,
    build: Callable[[float], DistributedDiscreteGaussian],
    max_sites: int,
) -> float:
    """The smallest noise multiplier z whose ``rounds`` released rounds cost at most
    ``target_epsilon`` at ``delta``, accounted as the controller accounts them: zCDP
    events (no credit for sampling) through the RDP accountant, each round at the worst
    number of contributing sites.

    ``build(z)`` makes the job's mechanism for z (its scale depends on z); a z it cannot
    build (sigma under 1/2, or a sum that would wrap) counts as too little noise.
    """

    def epsilon_at(z: float) -> float:
        try:
            mech = build(z)
        except ConfigError:
            return math.inf
        event = PrivacyEvent("zcdp", rho=mech.worst_rho(max_sites), count=rounds)
        eps = rdp_epsilon([event], delta)
        return math.inf if eps is None else eps

    return solve_noise_multiplier(epsilon_at, target_epsilon, what="distributed DP")


MAX_FAILED_ROUND_RATE = 1e-3


def failed_round_rate(min_sites: int, eligible_sites: int, sample_rate: float) -> float:
    """P(Binomial(N, q) < min_sites): how often Poisson sampling leaves a round short.

    Computed exactly with ``scipy.stats.binom``; a round with fewer than ``min_sites``
    contributions is not released, so this is the expected share of failed rounds.
    """
    if min_sites < 1 or eligible_sites < 1 or not 0 < sample_rate <= 1:
        raise ConfigError(
            f"distributed DP: min_sites {min_sites} and eligible sites {eligible_sites} must "
            f"be >= 1 and sample_rate {sample_rate} in (0, 1]"
        )
    return float(binom.cdf(min_sites - 1, eligible_sites, sample_rate))


def default_min_sites(
    eligible_sites: int, sample_rate: float, max_failure: float = MAX_FAILED_ROUND_RATE
) -> int:
    """The largest ``min_sites`` whose failed-round rate stays under ``max_failure``.

    ``floor(0.8 q N)``, the old default, misses about one round in eight at q N = 10; the
    binomial tail keeps failures rare. When even one site is too many to ask for (``(1 -
    q)^N >= max_failure``) the answer is 1, and the caller reports the failure rate.
    """
    # binom.ppf(p) is the smallest k with cdf(k) >= p; below it every k has cdf(k) < p.
    k = int(binom.ppf(max_failure, eligible_sites, sample_rate))
    while k >= 0 and failed_round_rate(k + 1, eligible_sites, sample_rate) >= max_failure:
        k -= 1  # ppf works in floating point: step down until the tail really is below
    while failed_round_rate(k + 2, eligible_sites, sample_rate) < max_failure:
        k += 1
    return max(1, k + 1)


def choose_scale(
    *,
    clip_norm: float,
    bits: int,
    max_sites: int,
    noise_multiplier: float,
    min_sites: int,
    dimension: int,
    tail_stddevs: float = 6.0,
) -> float:
    """Largest scale such that a sum of ``max_sites`` encodings cannot wrap around.

    Worst case without a random rotation: one coordinate holds a site's whole norm, so we need
    max_sites * (C gamma + 1) + tail_stddevs * sqrt(max_sites) * sigma < 2**(bits-1).
    Kairouz et al. flatten with a randomised Hadamard rotation to afford a larger scale; this
    bound is what holds without one.
    """
    half = 2.0 ** (bits - 1)

    def fits(scale: float) -> bool:
        try:
            p = DistributedDiscreteGaussian(
                clip_norm, scale, bits, noise_multiplier, min_sites, dimension
            )
        except ConfigError:
            return False  # sigma below 1/2 at this scale
        peak = (
            max_sites * (clip_norm * scale + 1)
            + tail_stddevs * math.sqrt(max_sites) * p.site_sigma()
        )
        return peak < half

    lo, hi = 0.0, half / clip_norm
    if fits(hi):
        return hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo == 0.0 or not fits(lo):
        raise ConfigError(
            f"distributed DP: {bits} bits cannot hold {max_sites} sites' sums with this noise"
        )
    return lo
