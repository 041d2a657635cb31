"""scikit-learn linear classifiers: coef_ and intercept_ are the model.

``SGDClassifier`` trains by ``partial_fit`` from the global coefficients (it accepts sites
that lack some classes); ``LogisticRegression`` by ``warm_start``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import accuracy_score, log_loss

from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings
from consortia.core.spec import ModelSpec


@dataclass
class LinearModel:
    """An unfitted estimator plus what the server must know before any data: the shapes."""

    estimator: SGDClassifier | LogisticRegression
    n_features: int
    classes: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.estimator, (SGDClassifier, LogisticRegression)):
            raise ConfigError("LinearModel supports SGDClassifier and LogisticRegression")
        self.classes = np.asarray(self.classes)
        if self.classes.size < 2:
            raise ConfigError("a classifier needs at least two classes")

    @property
    def n_outputs(self) -> int:
        return 1 if self.classes.size == 2 else int(self.classes.size)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_arrays(
            {
                "coef": np.empty((self.n_outputs, self.n_features), np.float64),
                "intercept": np.empty((self.n_outputs,), np.float64),
            }
        )

    def fitted(self, weights: np.ndarray) -> SGDClassifier | LogisticRegression:
        """A copy of the estimator carrying ``weights``, ready to predict or keep training."""
        arrays = self.spec.unflatten(weights)
        est = copy.deepcopy(self.estimator)
        est.coef_ = arrays["coef"]
        est.intercept_ = arrays["intercept"]
        est.classes_ = self.classes
        return est


def _vector(spec: ModelSpec, est: Any) -> np.ndarray:
    return spec.flatten(
        {
            "coef": np.asarray(est.coef_, np.float64),
            "intercept": np.asarray(est.intercept_, np.float64),
        }
    )


def _with_every_class(x: Any, y: Any, classes: np.ndarray) -> tuple[Any, Any, np.ndarray]:
    """(x, y, sample weights) with one weight-0 row for each of the job's classes this site
    lacks. LogisticRegression sizes its coefficients by the classes it sees in ``y``, so a
    site holding a few of them could not continue from the global model; rows of weight 0
    add the classes and change nothing in the fit."""
    y = np.asarray(y)
    missing = np.setdiff1d(classes, np.unique(y))
    weights = np.ones(len(y))
    if missing.size == 0:
        return x, y, weights
    x = np.asarray(x)
    filler = np.zeros((missing.size, *x.shape[1:]), dtype=x.dtype)
    return (
        np.concatenate([x, filler]),
        np.concatenate([y, missing.astype(y.dtype)]),
        np.concatenate([weights, np.zeros(missing.size)]),
    )


class SklearnTrainer:
    returns_fresh_vectors = True  # fit flattens into a new vector each time

    def __init__(self, model_factory: Callable[[], LinearModel]) -> None:
        self._factory = model_factory
        self._model: LinearModel | None = None

    @property
    def model(self) -> LinearModel:
        if self._model is None:
            m = self._factory()
            if not isinstance(m, LinearModel):
                raise ConfigError("the model factory must return consortia.LinearModel(...)")
            self._model = m
        return self._model

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        spec = self.model.spec
        return spec, np.zeros(spec.size, dtype=spec.vector_dtype)

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        if settings.local_dp:
            raise ConfigError("local DP-SGD needs the torch trainer (task.framework = 'torch')")
        m = self.model
        est = m.fitted(weights)
        est.set_params(random_state=seed % (2**32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if isinstance(est, SGDClassifier):
                for _ in range(settings.local_epochs):
                    est.partial_fit(x, y, classes=m.classes)
            else:
                est.set_params(warm_start=True, max_iter=settings.local_epochs)
                est.fit(*_with_every_class(x, y, m.classes))
        return _vector(m.spec, est), self._metrics(est, x, y)

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        return self._metrics(self.model.fitted(weights), x, y)

    def _metrics(self, est: Any, x: Any, y: Any) -> dict[str, float]:
        out = {"accuracy": float(accuracy_score(y, est.predict(x)))}
        if hasattr(est, "predict_proba") and getattr(est, "loss", "log_loss") == "log_loss":
            out["loss"] = float(log_loss(y, est.predict_proba(x), labels=self.model.classes))
        return out
