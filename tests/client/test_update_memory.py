"""The site computes its update in the trainer's returned vector only when the trainer
hands that vector over; the global model and a trainer's own arrays are never touched."""

from __future__ import annotations

import numpy as np

from consortia.client.runtime import Site, SiteData
from consortia.client.trainers.numpy import FunctionTrainer
from consortia.core.messages import FitIns, TrainSettings


class KeepsItsVector:
    """A trainer that returns an array it keeps (so it must not be overwritten)."""

    def __init__(self) -> None:
        self.kept = np.full(4, 5.0, np.float32)

    def fit(self, weights, x, y, settings, seed):
        return self.kept, {}

    def evaluate(self, weights, x, y):
        return {}


def _fit(trainer) -> tuple[np.ndarray, np.ndarray]:
    site = Site("a", trainer, SiteData(np.zeros((3, 1)), np.zeros(3)))
    weights = np.arange(4, dtype=np.float32)
    reply = site.handle(FitIns(1, weights, TrainSettings(), seed=0))
    return reply.delta, weights


def test_a_trainer_that_keeps_its_vector_gets_it_back_unchanged():
    trainer = KeepsItsVector()
    delta, weights = _fit(trainer)
    assert np.array_equal(delta, 5.0 - weights)
    assert np.array_equal(trainer.kept, np.full(4, 5.0)) and not np.shares_memory(
        delta, trainer.kept
    )


def _numpy_trainer(in_place: bool) -> FunctionTrainer:
    def init():
        return {"w": np.zeros(4, np.float32)}

    def fit(params, x, y, settings, rng):
        if in_place:
            params["w"] += 1.0
            return params, {}
        return {"w": params["w"] + 1.0}, {}

    return FunctionTrainer(init, fit, lambda p, x, y: {"loss": 0.0})


def test_numpy_fit_in_place_or_not_gives_the_same_update_and_leaves_the_model_alone():
    for in_place in (True, False):
        delta, weights = _fit(_numpy_trainer(in_place))
        assert np.array_equal(delta, np.ones(4, np.float32))
        assert np.array_equal(weights, np.arange(4, dtype=np.float32))


def test_numpy_evaluate_sees_read_only_views_of_the_model():
    seen = {}

    def evaluate(params, x, y):
        seen["writeable"] = params["w"].flags.writeable
        return {"loss": float(params["w"].sum())}

    trainer = FunctionTrainer(lambda: {"w": np.zeros(4, np.float32)}, None, evaluate)  # type: ignore[arg-type]
    weights = np.arange(4, dtype=np.float32)
    assert trainer.evaluate(weights, None, None) == {"loss": 6.0}
    assert seen["writeable"] is False
