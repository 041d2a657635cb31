"""PyTorch trainer: the user's ``nn.Module`` is built by their factory and used as is.

The module's own ``state_dict`` (parameters and buffers) defines the spec, so a saved
model loads straight back into the user's class with its original keys; nothing wraps it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings
from consortia.core.spec import ModelSpec

_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "mse": nn.MSELoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
}

_TORCH_TO_NUMPY = {
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def module_spec(module: nn.Module) -> ModelSpec:
    """Spec of a module's state_dict, in its own key order."""
    arrays = {}
    for k, t in module.state_dict().items():
        if t.dtype not in _TORCH_TO_NUMPY:
            raise ConfigError(f"tensor {k!r} has dtype {t.dtype}, which consortia cannot carry")
        arrays[k] = np.empty(tuple(t.shape), dtype=_TORCH_TO_NUMPY[t.dtype])
    return ModelSpec.from_arrays(arrays)


def module_to_vector(
    module: nn.Module, spec: ModelSpec | None = None
) -> tuple[ModelSpec, np.ndarray]:
    spec = spec or module_spec(module)
    state = module.state_dict()
    vec = np.empty(spec.size, dtype=spec.vector_dtype)
    for e, (a, b) in zip(spec.entries, spec.offsets(), strict=True):
        vec[a:b] = state[e.name].detach().cpu().reshape(-1).numpy()
    return spec, vec


def vector_to_module(module: nn.Module, spec: ModelSpec, vector: np.ndarray) -> None:
    """Copy a vector into the module's existing tensors in place (no new module, no rename)."""
    spec.check_vector(vector)
    state = module.state_dict()
    with torch.no_grad():
        for e, (a, b) in zip(spec.entries, spec.offsets(), strict=True):
            t = state[e.name]
            src = torch.from_numpy(np.ascontiguousarray(vector[a:b])).reshape(t.shape)
            if not t.dtype.is_floating_point:
                src = torch.round(src)
            t.copy_(src.to(t.dtype))


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread: results do not depend on the process's thread count, and on two
    cores shared with worker processes a second thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _single_thread_seeded(seed: int) -> Iterator[None]:
    """...and a private CPU RNG stream: the same site gives the same update whichever
    process runs it, and the caller's global torch state is left untouched."""
    with _single_thread(), torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class LocalSGD:
    """SGD with momentum and weight decay, the same arithmetic as ``torch.optim.SGD``
    (dampening 0, no Nesterov; a test checks they agree step for step).

    Written here because the first ``torch.optim`` optimiser of a process imports
    ``torch._dynamo``: 1-2 s per process, which is more than a simulated site's whole
    training, and every fresh worker or site process would pay it.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, weight_decay: float):
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self._buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self._buffers[i]
                if buf is None:
                    buf = self._buffers[i] = g.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self.lr)


def _make_optimizer(
    params: list[torch.Tensor], s: TrainSettings
) -> LocalSGD | torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return LocalSGD(params, s.lr, s.momentum, s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ConfigError(f"train.optimizer: unknown optimiser {s.optimizer!r} (sgd or adam)")


class TorchTrainer:
    """Local SGD/Adam for a user's module, with an optional FedProx proximal term."""

    returns_fresh_vectors = True  # fit flattens into a new vector each time

    def __init__(self, model_factory: Callable[[], nn.Module], loss: str = "cross_entropy") -> None:
        if loss not in _LOSSES:
            raise ConfigError(f"task.loss: unknown loss {loss!r}; choose from {sorted(_LOSSES)}")
        self._factory = model_factory
        self._loss_name = loss
        self._model: nn.Module | None = None
        self._spec: ModelSpec | None = None

    @property
    def model(self) -> nn.Module:
        """One module per process, reused every round: building it is the slow part."""
        if self._model is None:
            self._model = self._factory()
            if not isinstance(self._model, nn.Module):
                raise ConfigError("the model factory must return a torch.nn.Module")
            self._spec = module_spec(self._model)
        return self._model

    @property
    def spec(self) -> ModelSpec:
        _ = self.model
        assert self._spec is not None
        return self._spec

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        with torch.random.fork_rng(devices=[]):
            fresh = self._factory()
        return module_to_vector(fresh, self.spec)

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        model, spec = self.model, self.spec
        vector_to_module(model, spec, weights)
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        if settings.local_dp:
            return self._fit_dp_sgd(weights, xt, yt, settings, seed)
        loss_fn = _LOSSES[self._loss_name]()
        params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
        anchors = [p.detach().clone() for p in params] if settings.proximal_mu > 0 else []
        total, batches = 0.0, 0
        with _single_thread_seeded(seed):
            opt = _make_optimizer(params, settings)
            model.train()
            n = len(yt)
            for _ in range(settings.local_epochs):
                perm = torch.randperm(n)
                for start in range(0, n, settings.batch_size):
                    idx = perm[start : start + settings.batch_size]
                    opt.zero_grad()
                    loss = loss_fn(model(xt[idx]), yt[idx])
                    if anchors:
                        # FedProx (Li et al. 2020): mu/2 ||w - w_global||^2 keeps sites close.
                        prox = sum(
                            ((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True)
                        )
                        loss = loss + 0.5 * settings.proximal_mu * prox
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                    batches += 1
        _, local = module_to_vector(model, spec)
        return local, {"loss": total / max(batches, 1)}

    def _fit_dp_sgd(
        self, weights: np.ndarray, xt: torch.Tensor, yt: torch.Tensor, s: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Local DP-SGD (Opacus): per-example clipping and noise; example-level DP."""
        from consortia.privacy.local import dp_sgd_fit

        if s.optimizer != "sgd" or s.proximal_mu > 0:
            raise ConfigError("local DP-SGD supports train.optimizer = 'sgd' without FedProx")
        loss = _LOSSES[self._loss_name]()
        with _single_thread_seeded(seed):
            result = dp_sgd_fit(
                self.model,
                xt,
                yt,
                epochs=s.local_epochs,
                batch_size=min(s.batch_size, len(yt)),
                lr=s.lr,
                noise_multiplier=s.dp_noise_multiplier,
                max_grad_norm=s.dp_max_grad_norm,
                seed=seed if s.dp_seeded_noise else None,
                loss_fn=loss,
                momentum=s.momentum,
            )
        _, local = module_to_vector(self.model, self.spec)
        losses = result.epoch_losses
        return local, {"loss": float(np.mean(losses)) if losses else 0.0}

    def preflight(self, weights: np.ndarray, x: Any, y: Any) -> None:
        """Before any round: the model's output fits the labels (a classifier needs an
        output per class; otherwise some sites would fail with an IndexError, and sites
        without the high labels would seem to train)."""
        model = self.model
        vector_to_module(model, self.spec, weights)
        model.eval()
        with torch.no_grad(), _single_thread():
            out = model(torch.as_tensor(x[:1]))
        labels = np.asarray(y)
        if self._loss_name == "cross_entropy" and np.issubdtype(labels.dtype, np.integer):
            width, top = int(out.shape[-1]), int(labels.max())
            if top >= width or labels.min() < 0:
                raise ConfigError(
                    f"the model has {width} outputs but the labels run from {labels.min()} to "
                    f"{top} ({np.unique(labels).size} classes): a cross-entropy classifier "
                    f"needs one output per label, at least {top + 1}"
                )
        self.evaluate(weights, x, y)

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        model = self.model
        vector_to_module(model, self.spec, weights)
        model.eval()
        with torch.no_grad(), _single_thread():
            out = model(torch.as_tensor(x))
            yt = torch.as_tensor(y)
            metrics = {"loss": float(_LOSSES[self._loss_name]()(out, yt))}
            if self._loss_name == "cross_entropy":
                metrics["accuracy"] = float((out.argmax(1) == yt).float().mean())
        return metrics
