"""Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2).

The aggregated update ``delta`` (mean of local - global) is a pseudo-gradient step:
``x <- x + lr * delta`` is FedAvg at lr 1. Momentum, Adam, Yogi and Adagrad keep
moment vectors as state. Every optimiser is ``init(x) -> state`` and
``step(state, x, delta) -> (x, state)``: pure, returning new arrays, so a checkpoint is
just the state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from consortia.core.registry import SERVER_OPTIMIZERS

State = dict[str, np.ndarray]


class ServerOptimizer(Protocol):
    @property
    def name(self) -> str: ...

    def init(self, x: np.ndarray) -> State: ...

    def step(self, state: State, x: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, State]: ...


@dataclass(frozen=True)
class SGD:
    lr: float = 1.0
    name: str = "sgd"

    def init(self, x: np.ndarray) -> State:
        return {}

    def step(self, state: State, x: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, State]:
        # One new model-sized array, not two (``x + lr * delta`` materialises ``lr * delta``
        # first); the values are the same, as addition is commutative.
        if self.lr == 1.0:
            out = x + delta
        else:
            out = np.multiply(delta, self.lr)
            out += x
        return out.astype(x.dtype, copy=False), state


@dataclass(frozen=True)
class Momentum:
    """FedAvgM (Hsu et al. 2019): m <- beta m + delta; x <- x + lr m."""

    lr: float = 1.0
    momentum: float = 0.9
    name: str = "momentum"

    def init(self, x: np.ndarray) -> State:
        return {"m": np.zeros_like(x)}

    def step(self, state: State, x: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, State]:
        m = self.momentum * state["m"] + delta
        return (x + self.lr * m).astype(x.dtype, copy=False), {"m": m.astype(x.dtype, copy=False)}


@dataclass(frozen=True)
class _Adaptive:
    """Shared shape of FedAdam, FedYogi and FedAdagrad: only the v update (by name) differs.

    As in the paper there is no bias correction, and v starts at tau^2 (v_{-1} >= tau^2).
    """

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    name: str = "adaptive"

    def init(self, x: np.ndarray) -> State:
        return {"m": np.zeros_like(x), "v": np.full_like(x, self.tau**2)}

    def _v(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        if self.name == "yogi":
            return v - (1.0 - self.beta2) * d2 * np.sign(v - d2)
        if self.name == "adagrad":
            return v + d2
        return self.beta2 * v + (1.0 - self.beta2) * d2

    def step(self, state: State, x: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, State]:
        m = self.beta1 * state["m"] + (1.0 - self.beta1) * delta
        v = self._v(state["v"], delta * delta)
        new_x = x + self.lr * m / (np.sqrt(v) + self.tau)
        dt = x.dtype
        return new_x.astype(dt, copy=False), {
            "m": m.astype(dt, copy=False),
            "v": v.astype(dt, copy=False),
        }


@dataclass(frozen=True)
class Adam(_Adaptive):
    """FedAdam: v <- beta2 v + (1 - beta2) delta^2."""

    name: str = "adam"


@dataclass(frozen=True)
class Yogi(_Adaptive):
    """FedYogi: v <- v - (1 - beta2) delta^2 sign(v - delta^2); v grows more cautiously."""

    name: str = "yogi"


@dataclass(frozen=True)
class Adagrad(_Adaptive):
    """FedAdagrad: v <- v + delta^2."""

    name: str = "adagrad"


def make_server_optimizer(name: str, **options: float | None) -> ServerOptimizer:
    """Build a registered optimiser by name from the options it takes (others are ignored,
    so one job-file section can serve every optimiser); an lr of None keeps its default."""
    cls = SERVER_OPTIMIZERS.get(name)
    names = {f.name for f in dataclasses.fields(cls)} - {"name"}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in options.items() if k in names and v is not None}
    optimizer: ServerOptimizer = cls(**kwargs)  # type: ignore[operator]
    return optimizer


for _cls in (SGD, Momentum, Adam, Yogi, Adagrad):
    SERVER_OPTIMIZERS.register(_cls.name, _cls)
