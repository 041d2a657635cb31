"""Differential privacy for consortia: pure functions on flat vectors plus an accountant.

- ``clip``: L2 clipping. ``rng``: ChaCha20 noise (``SecureRng``).
- ``central``: DP-FedAvg server noise and adaptive clipping.
- ``distributed``: distributed discrete Gaussian for secure aggregation's integer ring.
- ``accountant``: privacy events, epsilon by dp-accounting (RDP and PLD), calibration.
- ``budget``: the one budget guard (job limit, site policy, analytics).
- ``sampling``: Poisson sampling of sites.
- ``analytics``: DP counts, histograms, means, quantiles.
- ``mechanisms``: one object per privacy mode; the one place a mode string is read.
- ``local``: DP-SGD with Opacus (imports torch; loaded on first use of ``dp_sgd_fit``).
"""

from __future__ import annotations

from typing import Any

from consortia.privacy.accountant import (
    PrivacyAccountant,
    PrivacyEvent,
    calibrate,
    epsilon_for,
)
from consortia.privacy.analytics import (
    NoiseSpec,
    dp_count,
    dp_histogram,
    dp_mean,
    dp_quantiles,
    release_sum,
)
from consortia.privacy.budget import BudgetDecision, BudgetGuard, check_budget, epsilon_of
from consortia.privacy.central import (
    AdaptiveClipping,
    ClippedUpdate,
    add_gaussian_noise,
    clip_update,
    noise_stddev,
    noisy_mean,
    split_noise_multiplier,
)
from consortia.privacy.clip import l2_clip
from consortia.privacy.distributed import DistributedDiscreteGaussian, choose_scale, modular_sum
from consortia.privacy.rng import SecureRng, UniformSource
from consortia.privacy.sampling import poisson_sample

__all__ = [
    "AdaptiveClipping",
    "BudgetDecision",
    "BudgetGuard",
    "ClippedUpdate",
    "DPFitResult",
    "DistributedDiscreteGaussian",
    "NoiseSpec",
    "PrivacyAccountant",
    "PrivacyEvent",
    "SecureRng",
    "UniformSource",
    "add_gaussian_noise",
    "calibrate",
    "check_budget",
    "choose_scale",
    "clip_update",
    "dp_count",
    "dp_histogram",
    "dp_mean",
    "dp_quantiles",
    "dp_sgd_fit",
    "epsilon_for",
    "epsilon_of",
    "l2_clip",
    "modular_sum",
    "noise_stddev",
    "noisy_mean",
    "poisson_sample",
    "release_sum",
    "split_noise_multiplier",
]


def __getattr__(name: str) -> Any:
    # torch is an optional dependency: import the Opacus trainer only when asked for.
    if name in ("dp_sgd_fit", "DPFitResult"):
        from consortia.privacy import local

        return getattr(local, name)
    raise AttributeError(f"module 'consortia.privacy' has no attribute {name!r}")
