"""Plain-function trainer: any model that can be written as NumPy arrays and functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings
from consortia.core.spec import ModelSpec

Params = dict[str, np.ndarray]
InitFn = Callable[[], Params]
FitFn = Callable[
    [Params, Any, Any, TrainSettings, np.random.Generator], tuple[Params, dict[str, float]]
]
EvalFn = Callable[[Params, Any, Any], dict[str, float]]


class FunctionTrainer:
    """``init() -> params``, ``fit(params, x, y, settings, rng) -> (params, metrics)``,
    ``evaluate(params, x, y) -> metrics`` over a dict of named arrays."""

    def __init__(self, init: InitFn, fit: FitFn, evaluate: EvalFn) -> None:
        self._init, self._fit, self._evaluate = init, fit, evaluate
        self._spec: ModelSpec | None = None

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        params = self._init()
        self._spec = ModelSpec.from_arrays(params)
        return self._spec, self._spec.flatten(params)

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            self.initial()
        assert self._spec is not None
        return self._spec

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        if settings.local_dp:
            raise ConfigError("local DP-SGD needs the torch trainer (task.framework = 'torch')")
        params, metrics = self._fit(
            self.spec.unflatten(weights), x, y, settings, np.random.default_rng(seed)
        )
        return self.spec.flatten(params), metrics

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        return self._evaluate(self.spec.unflatten(weights), x, y)
