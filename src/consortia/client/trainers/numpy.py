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

    returns_fresh_vectors = True  # fit returns its own working copy, kept by no one

    def __init__(self, init: InitFn, fit: FitFn, evaluate: EvalFn) -> None:
        self._init, self._fit, self._evaluate = init, fit, evaluate
        self._spec: ModelSpec | None = None

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        params = self._init()
        self._spec = ModelSpec.from_arrays(params)
        return self._spec, self._spec.flatten(params)

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:  # a site that never made the initial vector: shapes suffice
            self._spec = ModelSpec.from_arrays(self._init())
        return self._spec

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        if settings.local_dp:
            raise ConfigError("local DP-SGD needs the torch trainer (task.framework = 'torch')")
        given = self.spec.unflatten(weights)
        params, metrics = self._fit(dict(given), x, y, settings, np.random.default_rng(seed))
        same = self._returned_in_place(given, params)
        del given
        return same if same is not None else self.spec.flatten(params), metrics

    def _returned_in_place(self, given: Params, params: Params) -> np.ndarray | None:
        """A single-tensor model that ``fit`` updated in place and returned is already the
        new vector: no second model-sized copy. Anything else is flattened as usual."""
        if len(given) != 1 or set(params) != set(given):
            return None
        ((name, ours),) = given.items()
        if params[name] is not ours or ours.dtype != self.spec.vector_dtype:
            return None
        return ours.reshape(-1)

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        # Read-only views: evaluation must not change the model it is shown, and for a
        # large model a copy per evaluation is a model's worth of memory for nothing.
        return self._evaluate(self.spec.views(weights), x, y)
