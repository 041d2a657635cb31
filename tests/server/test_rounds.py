"""Whole rounds in-process over the debug fleet, with a toy trainer whose numbers are exact."""

import numpy as np
import pytest

from consortia.client.runtime import Site, SiteData
from consortia.core.errors import RoundFailedError
from consortia.core.messages import FitRes, TrainSettings
from consortia.core.spec import ModelSpec
from consortia.fleet.debug import DebugFleet
from consortia.server.workflow import LoopSettings, Workflow, standard_steps
from consortia.strategy.presets import make_strategy
from consortia.strategy.selection import UniformSelection

SPEC = ModelSpec.from_arrays({"w": np.zeros(2, np.float32)})


class ToTarget:
    """Local training moves the weights all the way to the site's data mean."""

    def initial(self):
        return SPEC, np.zeros(2, np.float32)

    def fit(self, weights, x, y, settings, seed):
        return np.asarray(x, np.float32).mean(axis=0), {"loss": float(len(y))}

    def evaluate(self, weights, x, y):
        err = float(np.abs(weights - np.asarray(x).mean(axis=0)).sum())
        return {"loss": err, "accuracy": 1.0 / (1.0 + err)}


class Broken(ToTarget):
    def fit(self, weights, x, y, settings, seed):
        raise RuntimeError("disk on fire")


class NaNs(ToTarget):
    def fit(self, weights, x, y, settings, seed):
        return np.full(2, np.nan, np.float32), {}


def _site(sid, target, n, trainer=None):
    x = np.tile(np.asarray(target, np.float32), (n, 1))
    return Site(sid, trainer or ToTarget(), SiteData(x, np.zeros(n), x, np.zeros(n)))


class _Loop:
    """Rounds of the standard workflow over a debug fleet, keeping every round's record."""

    def __init__(self, workflow, fleet):
        self.workflow, self.fleet, self.records = workflow, fleet, []

    def initial_state(self, weights):
        return self.workflow.initial_state(weights)

    def run(self, state):
        while state.round < self.workflow.settings.rounds:
            state, record = self.workflow.run_round(state, self.fleet)
            self.records.append(record)
        return state


def _loop(sites, rounds=1, min_replies=1, **kw):
    fleet = DebugFleet(list(sites), lambda s: sites[s])
    strategy = make_strategy(
        "fedavg", selection=UniformSelection(count=len(sites)), train=TrainSettings()
    )
    settings = LoopSettings(rounds=rounds, min_fit_replies=min_replies, **kw)
    return _Loop(Workflow(SPEC, standard_steps(strategy, settings), settings), fleet)


def test_fedavg_round_is_the_example_weighted_mean():
    sites = {"a": _site("a", [1.0, 0.0], 1), "b": _site("b", [5.0, 4.0], 3)}
    loop = _loop(sites)
    state = loop.run(loop.initial_state(np.zeros(2, np.float32)))
    # (1*[1,0] + 3*[5,4]) / 4 = [4, 3]
    np.testing.assert_allclose(state.weights, [4.0, 3.0])
    assert state.round == 1


def test_site_that_raises_does_not_stop_the_round():
    sites = {
        "a": _site("a", [2.0, 2.0], 1),
        "b": _site("b", [9.0, 9.0], 1, Broken()),
        "c": _site("c", [4.0, 0.0], 1),
    }
    loop = _loop(sites, min_replies=2)
    records = loop.records
    state = loop.run(loop.initial_state(np.zeros(2, np.float32)))
    np.testing.assert_allclose(state.weights, [3.0, 1.0])
    (rec,) = records
    assert rec.replies == 2 and [f.site for f in rec.failures] == ["b"]
    assert "disk on fire" in rec.failures[0].reason
    assert rec.to_json()["failures"] == 1


def test_non_finite_update_is_refused_like_a_failure():
    sites = {"a": _site("a", [2.0, 2.0], 1), "b": _site("b", [0.0, 0.0], 1, NaNs())}
    loop = _loop(sites)
    state = loop.run(loop.initial_state(np.zeros(2, np.float32)))
    np.testing.assert_allclose(state.weights, [2.0, 2.0])


def test_too_few_replies_stops_with_a_clear_error_and_keeps_the_last_good_state():
    sites = {"a": _site("a", [2.0, 2.0], 1), "b": _site("b", [0.0, 0.0], 1, Broken())}
    loop = _loop(sites, rounds=2, min_replies=2)
    start = loop.initial_state(np.ones(2, np.float32))
    with pytest.raises(RoundFailedError, match=r"1 replies, at least 2 needed \(b: RuntimeError"):
        loop.run(start)
    np.testing.assert_array_equal(start.weights, [1.0, 1.0])


def test_forged_sender_and_stale_round_are_refused():
    class Liar(Site):
        def on_fit(self, message):
            real = super().on_fit(message)
            return FitRes("someone-else", real.round, real.delta, real.num_examples, {})

    class Stale(Site):
        def on_fit(self, message):
            real = super().on_fit(message)
            return FitRes(real.site, real.round - 1, real.delta, real.num_examples, {})

    x = np.ones((1, 2), np.float32)
    sites = {
        "a": _site("a", [2.0, 2.0], 1),
        "b": Liar("b", ToTarget(), SiteData(x, np.zeros(1))),
        "c": Stale("c", ToTarget(), SiteData(x, np.zeros(1))),
    }
    loop = _loop(sites)
    records = loop.records
    state = loop.run(loop.initial_state(np.zeros(2, np.float32)))
    np.testing.assert_allclose(state.weights, [2.0, 2.0])
    reasons = {f.site: f.reason for f in records[0].failures}
    assert "claims sender" in reasons["b"] and "arrived in round" in reasons["c"]


def test_federated_evaluation_reports_distribution_and_worst_site():
    sites = {"a": _site("a", [1.0, 1.0], 1), "b": _site("b", [3.0, 3.0], 1)}
    loop = _loop(
        sites, federated_every=1, federated_selection=UniformSelection(count=2), central_every=0
    )
    records = loop.records
    loop.run(loop.initial_state(np.zeros(2, np.float32)))
    m = records[0].metrics
    # global = [2, 2]: each site is off by 2 in total -> accuracy 1/3 everywhere
    assert m["federated_loss"] == pytest.approx(2.0)
    assert m["federated_accuracy_min"] == pytest.approx(1 / 3)
    assert records[0].worst_site in {"a", "b"}
    assert m["train_loss"] == pytest.approx(1.0)
