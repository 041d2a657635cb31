"""Typed messages of the round protocol, one class per phase and direction.

Messages are plain frozen dataclasses holding numpy vectors; transports turn them into
bytes with their own schema (never pickle across a network). ``validate_*`` functions are
the boundary checks every incoming reply passes before it touches server state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.core.errors import ConsortiaError
from consortia.core.spec import ModelSpec


class InvalidMessageError(ConsortiaError):
    """An incoming message failed validation; it is dropped and its sender marked failed."""


@dataclass(frozen=True)
class TrainSettings:
    """Client-side training settings the strategy sends with each fit request."""

    local_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # Local DP-SGD (example-level DP, Opacus): off while dp_noise_multiplier is 0.
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0
    dp_seeded_noise: bool = False  # debug/test only: DP-SGD noise from the fit seed

    @property
    def local_dp(self) -> bool:
        return self.dp_noise_multiplier > 0


@dataclass(frozen=True)
class ClientPrivacy:
    """What a site must do to its update this round, and what it needs to check the cost.

    ``mode`` "central": clip the update to ``clip_norm`` (the server adds the noise).
    ``mode`` "distributed": clip, scale by ``scale``, round, add this site's share of
    discrete Gaussian noise and wrap modulo 2**bits (Kairouz et al. 2021), so that no one
    sees an un-noised sum once secure aggregation sums the shares.
    ``noise_multiplier``, ``sample_rate`` and ``rounds`` are the server's declared
    accounting, which the site's own policy recomputes and may refuse.
    """

    mode: str
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    delta: float
    scale: float = 0.0
    bits: int = 0
    min_sites: int = 0
    noise_seed: int | None = None  # set only in debug/test runs: noise is then reproducible


@dataclass(frozen=True)
class FitIns:
    """Server -> site: train from this global model."""

    round: int
    weights: np.ndarray
    settings: TrainSettings
    seed: int
    privacy: ClientPrivacy | None = None


@dataclass(frozen=True)
class FitRes:
    """Site -> server: the update (local - global), how many examples made it, metrics."""

    site: str
    round: int
    delta: np.ndarray
    num_examples: int
    metrics: dict[str, float]
    # Central DP with adaptive clipping: +1/2 if the update was within the clip norm, else
    # -1/2 (Andrew et al. 2021); the server sums these bits with noise.
    clip_bit: float | None = None


@dataclass(frozen=True)
class EvaluateIns:
    """Server -> site: evaluate this global model on local held-out data."""

    round: int
    weights: np.ndarray


@dataclass(frozen=True)
class EvaluateRes:
    site: str
    round: int
    num_examples: int
    metrics: dict[str, float]


Message = FitIns | FitRes | EvaluateIns | EvaluateRes


def _check_header(reply: FitRes | EvaluateRes, site: str, round_: int) -> None:
    if reply.site != site:
        raise InvalidMessageError(f"reply claims sender {reply.site!r} but came from {site!r}")
    if reply.round != round_:
        raise InvalidMessageError(f"reply for round {reply.round} arrived in round {round_}")
    if not isinstance(reply.num_examples, int) or reply.num_examples < 0:
        raise InvalidMessageError(
            f"num_examples must be a non-negative int, got {reply.num_examples!r}"
        )
    for k, v in reply.metrics.items():
        if not isinstance(k, str) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidMessageError(f"metric {k!r} must be a finite number, got {v!r}")


def validate_fit_res(
    reply: Any, spec: ModelSpec, site: str, round_: int, modulus_bits: int = 0
) -> FitRes:
    """Check sender, round, shape, dtype and value range of an update before using it.

    Plain updates are finite floats of the model's dtype; with ``modulus_bits`` (distributed
    DP) they are unsigned integers below 2**modulus_bits.
    """
    if not isinstance(reply, FitRes):
        raise InvalidMessageError(f"expected a fit reply, got {type(reply).__name__}")
    _check_header(reply, site, round_)
    d = reply.delta
    if not isinstance(d, np.ndarray) or d.ndim != 1:
        raise InvalidMessageError("update must be a 1-D array")
    if d.shape[0] != spec.size:
        raise InvalidMessageError(f"update has {d.shape[0]} values, the model has {spec.size}")
    if modulus_bits:
        if d.dtype != np.uint64:
            raise InvalidMessageError(f"encoded update dtype {d.dtype} is not uint64")
        if d.size and int(d.max()) >= 1 << modulus_bits:
            raise InvalidMessageError(f"encoded update has values of {modulus_bits} bits or more")
        return reply
    if d.dtype != spec.vector_dtype:
        raise InvalidMessageError(f"update dtype {d.dtype} is not the model's {spec.vector_dtype}")
    if not np.isfinite(d).all():
        raise InvalidMessageError("update holds NaN or infinite values")
    if reply.clip_bit is not None and reply.clip_bit not in (-0.5, 0.5):
        raise InvalidMessageError(f"clip bit must be -0.5 or 0.5, got {reply.clip_bit!r}")
    return reply


def validate_evaluate_res(reply: Any, site: str, round_: int) -> EvaluateRes:
    if not isinstance(reply, EvaluateRes):
        raise InvalidMessageError(f"expected an evaluate reply, got {type(reply).__name__}")
    _check_header(reply, site, round_)
    return reply
