"""Plain-function trainer: any model that can be written as NumPy arrays and functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from consortia.client.trainers.base import new_vector
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
        # The working copy is one vector the params are views of: a fit that updates them
        # in place (and returns them) has then already written the new vector.
        spec = self.spec
        work = new_vector(spec.size, spec.vector_dtype)
        np.copyto(work, weights)
        given = spec.views(work, writable=True)
        params, metrics = self._fit(dict(given), x, y, settings, np.random.default_rng(seed))
        if self._updated_in_place(work, given, params):
            return work, metrics
        del work, given  # a fit that returned new arrays: flatten them into a new vector
        return spec.flatten(params, out=new_vector(spec.size, spec.vector_dtype)), metrics

    @staticmethod
    def _updated_in_place(work: np.ndarray, given: Params, params: Params) -> bool:
        """Every returned array is the view of ``work`` it was given (no converted copy)."""
        return set(params) == set(given) and all(
            params[k] is v and np.shares_memory(v, work) for k, v in given.items()
        )

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        # Read-only views: evaluation must not change the model it is shown, and for a
        # large model a copy per evaluation is a model's worth of memory for nothing.
        return self._evaluate(self.spec.views(weights), x, y)
