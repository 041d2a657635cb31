"""Local DP-SGD with Opacus: example-level DP for a site's own training.

We use Opacus's pieces directly: ``GradSampleHooks`` (per-example gradients by hooks that
attach to the user's module *without wrapping it*) and ``DPOptimizer`` (per-example clipping
to ``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm``).

Randomness: Opacus draws its noise (and ``DPDataLoader`` its Poisson batches) from a torch
generator, which is a Mersenne Twister unless ``secure_mode`` finds ``torchcsprng``; that
package is unmaintained and not installed here. A Mersenne Twister's state can be recovered
from its outputs, and predictable noise can be subtracted. So both the Poisson batch
sampling (rate batch_size / n, as the accountant assumes) and the Gaussian noise come from
our ChaCha20 ``SecureRng``: ``SecureNoiseDPOptimizer`` replaces only Opacus's noise draw.
We do not use ``PrivacyEngine.make_private``: it wraps the model in a ``GradSampleModule`` whose
``state_dict`` keys gain a ``_module.`` prefix (opacus#435), and keeps its own accountant,
while ours is ``PrivacyAccountant``. Hooks are removed and Opacus's per-parameter attributes
are deleted after training, so the module is left as the user gave it and can be trained
again next round.

Example-level accounting: ``DPFitResult.privacy_event()`` is ``steps`` Poisson-subsampled
Gaussian releases at ``sample_rate``; the site composes it into its own accountant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyEvent
from consortia.privacy.rng import SecureRng

# Attributes Opacus sets on parameters and modules during training.
_PARAM_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_processed")
_MODULE_ATTRS = ("activations", "max_batch_len")


class SecureNoiseDPOptimizer(DPOptimizer):
    """Opacus's DP optimizer with its Gaussian noise drawn from ``SecureRng`` (ChaCha20).

    Only ``add_noise`` changes: the same std (noise_multiplier * max_grad_norm) on the
    summed clipped per-example gradients, the same bookkeeping flags as Opacus's own.
    """

    def __init__(self, *args: object, rng: SecureRng, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.secure_rng = rng

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            grad = p.summed_grad
            if std > 0:
                draw = self.secure_rng.normal(grad.numel(), std)
                noise = torch.from_numpy(draw).to(dtype=grad.dtype, device=grad.device)
                grad = grad + noise.view_as(grad)
            p.grad = grad.view_as(p)
            _mark_as_processed(p.summed_grad)


def poisson_batches(n: int, sample_rate: float, steps: int, rng: SecureRng) -> Iterator[np.ndarray]:
    """Index arrays of ``steps`` Poisson batches: each example in each batch with
    probability ``sample_rate``, independently, from the secure generator."""
    for _ in range(steps):
        yield np.flatnonzero(rng.random(n) < sample_rate)


@dataclass(frozen=True)
class DPFitResult:
    """What one call of :func:`dp_sgd_fit` did, enough to account example-level DP."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    examples: int
    epoch_losses: list[float] = field(default_factory=list)

    def privacy_event(self) -> PrivacyEvent:
        """The ``steps`` Poisson-subsampled Gaussian releases this training made."""
        return PrivacyEvent(
            "gaussian", self.noise_multiplier, self.sample_rate, self.steps, label="dp-sgd"
        )


def dp_sgd_fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    momentum: float = 0.0,
) -> DPFitResult:
    """Train ``model`` in place with DP-SGD; return steps, sample rate and mean loss per epoch.

    ``batch_size`` is the *expected* batch size: batches are Poisson samples at rate
    batch_size / len(x), and there are len(x) // batch_size steps per epoch (as in Opacus).
    Batches and noise come from ``SecureRng``: keyed from ``os.urandom`` when ``seed`` is
    None, else derived from ``seed`` (tests and debugging only). ``loss_fn`` must average
    over the batch (default: cross-entropy).
    """
    n = int(x.shape[0])
    if n == 0 or int(y.shape[0]) != n:
        raise ConfigError(
            f"dp_sgd_fit: x and y need the same non-zero length, got {n}, {y.shape[0]}"
        )
    if epochs < 1 or not 1 <= batch_size <= n:
        raise ConfigError(f"dp_sgd_fit: need epochs >= 1 and 1 <= batch_size <= {n}")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"dp_sgd_fit: noise_multiplier must be >= 0, got {noise_multiplier}")
    if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        raise ConfigError(f"dp_sgd_fit: max_grad_norm must be > 0, got {max_grad_norm}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    rng = SecureRng() if seed is None else SecureRng(seed)
    sample_rate = batch_size / n
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = SecureNoiseDPOptimizer(
        torch.optim.SGD(params, lr=lr, momentum=momentum),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=batch_size,
        rng=rng,
    )
    hooks = GradSampleHooks(model, loss_reduction="mean")
    was_training = model.training
    model.train()
    steps, epoch_losses = 0, []
    try:
        for _ in range(epochs):
            total, seen = 0.0, 0
            for idx in poisson_batches(n, sample_rate, n // batch_size, rng):
                xb, yb = x[torch.from_numpy(idx)], y[torch.from_numpy(idx)]
                optimizer.zero_grad(set_to_none=True)
                if xb.shape[0] > 0:
                    loss = loss_fn(model(xb), yb)
                    with warnings.catch_warnings():
                        # Opacus's hooks on the first layer fire with no input gradient;
                        # torch warns about that every step, harmlessly.
                        warnings.filterwarnings("ignore", message="Full backward hook")
                        loss.backward()
                    total += float(loss.detach()) * xb.shape[0]
                    seen += int(xb.shape[0])
                else:  # empty Poisson batch: the step is pure noise, as the analysis assumes
                    for p in params:
                        setattr(p, "grad_sample", torch.zeros((0, *p.shape), dtype=p.dtype))  # noqa: B010
                optimizer.step()
                steps += 1
            epoch_losses.append(total / max(seen, 1))
    finally:
        hooks.remove_hooks()
        _strip_opacus_state(model)
        model.train(was_training)
    return DPFitResult(steps, sample_rate, noise_multiplier, max_grad_norm, n, epoch_losses)


def _strip_opacus_state(model: nn.Module) -> None:
    """Remove what Opacus attached, so the module is plain again (and picklable, copyable)."""
    for p in model.parameters():
        for attr in _PARAM_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None
    for m in model.modules():
        for attr in _MODULE_ATTRS:
            if hasattr(m, attr):
                delattr(m, attr)
