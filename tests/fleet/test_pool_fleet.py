"""Process-pool and debug fleets: replies in request order, failures never stop a phase."""

import os
import time

import numpy as np

from consortia.client.app import SiteApp
from consortia.client.runtime import Site, SiteData
from consortia.core.messages import EvaluateIns, EvaluateRes, FitIns, TrainSettings
from consortia.fleet.base import Failure, Reply, Timing
from consortia.fleet.debug import DebugFleet
from consortia.fleet.pool import PoolFleet


class Plus:
    def __init__(self, inc: float, sleep: float = 0.0, fail: bool = False) -> None:
        self.inc, self.sleep, self.fail = inc, sleep, fail

    def initial(self):
        raise AssertionError("not used")

    def fit(self, weights, x, y, settings, seed):
        time.sleep(self.sleep)
        if self.fail:
            raise ValueError("bad batch")
        return weights + self.inc, {"seed": float(seed % 1000)}

    def evaluate(self, weights, x, y):
        return {}


SITES = {
    "a": Plus(1.0),
    "b": Plus(2.0, fail=True),
    "c": Plus(3.0, sleep=3.0),
    "d": Plus(4.0, sleep=0.2),
}


def _make(site_id: str) -> Site:
    return Site(site_id, SITES[site_id], SiteData(np.zeros((2, 1)), np.zeros(2)))


def _requests():
    w = np.zeros(2, np.float32)
    return [(s, FitIns(1, w, TrainSettings(), seed=i)) for i, s in enumerate("abcd")]


def _check(outcomes):
    assert [o.site for o in outcomes] == ["a", "b", "c", "d"]
    a, b, c, d = outcomes
    assert isinstance(a, Reply) and np.array_equal(a.message.delta, [1.0, 1.0])
    assert isinstance(b, Failure) and "ValueError: bad batch" in b.reason
    assert isinstance(c, Failure) and "deadline" in c.reason
    assert isinstance(d, Reply) and np.array_equal(d.message.delta, [4.0, 4.0])


def test_pool_fleet_reports_errors_and_missed_deadlines_without_stalling():
    fleet = PoolFleet(list(SITES), _make, workers=2)
    try:
        start = time.monotonic()
        outcomes = list(fleet.send(_requests(), Timing(1.0)))
        assert time.monotonic() - start < 2.0  # did not wait for the 3 s site
        _check(outcomes)
    finally:
        fleet.close()


def test_debug_fleet_gives_the_same_outcomes():
    _check(list(DebugFleet(list(SITES), _make).send(_requests(), Timing(1.0))))


def test_batched_sites_keep_request_order_and_their_own_errors():
    many = {f"s{i:02d}": Plus(float(i), fail=(i % 5 == 3)) for i in range(16)}

    def make(site_id: str) -> Site:
        return Site(site_id, many[site_id], SiteData(np.zeros((2, 1)), np.zeros(2)))

    fleet = PoolFleet(list(many), make, workers=2)  # 16 requests: batches of 2
    try:
        w = np.zeros(1, np.float32)
        reqs = [(s, FitIns(1, w, TrainSettings(), seed=0)) for s in many]
        outcomes = list(fleet.send(reqs, Timing(10.0)))
    finally:
        fleet.close()
    assert [o.site for o in outcomes] == list(many)
    for i, o in enumerate(outcomes):
        if i % 5 == 3:
            assert isinstance(o, Failure) and "bad batch" in o.reason
        else:
            assert isinstance(o, Reply) and o.message.delta[0] == i


class Counter(SiteApp):
    """Counts the messages it has answered: state that must live in one place."""

    def __init__(self, site_id: str) -> None:
        super().__init__(site_id)
        self.calls = 0

    def on_evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        self.calls += 1
        if self.site_id == "die" and ins.round == 2:
            os._exit(3)  # a native crash takes the whole worker process down
        return EvaluateRes(self.site_id, ins.round, 1, {"calls": float(self.calls)})


def _ask(fleet, sites, rnd):
    reqs = [(s, EvaluateIns(rnd, np.zeros(1))) for s in sites]
    return list(fleet.send(reqs, Timing(20.0)))


def test_a_site_keeps_its_app_and_state_on_its_worker_across_phases():
    sites = [f"s{i}" for i in range(7)]
    fleet = PoolFleet(sites, Counter, workers=3)
    try:
        for rnd in range(1, 5):
            chosen = sites[rnd % 3 :]  # different subsets each time
            for o in _ask(fleet, chosen, rnd):
                assert isinstance(o, Reply)
        counts = {o.site: o.message.metrics["calls"] for o in _ask(fleet, sites, 5)}
    finally:
        fleet.close()
    expected = {s: 1 + sum(1 for r in range(1, 5) if s in sites[r % 3 :]) for s in sites}
    assert counts == expected


def test_a_dead_worker_names_its_site_reruns_the_others_and_is_replaced():
    sites = ["a", "b", "die", "d", "e", "f"]
    fleet = PoolFleet(sites, Counter, workers=2)
    try:
        assert all(isinstance(o, Reply) for o in _ask(fleet, sites, 1))
        start = time.monotonic()
        second = _ask(fleet, sites, 2)  # deadline 20 s: the phase must not wait for it
        assert time.monotonic() - start < 10
        failed = {o.site: o.reason for o in second if isinstance(o, Failure)}
        assert failed == {"die": "the site's code ended its worker process (exit code 3)"}
        # The others pinned to that worker ran again on its replacement (state lost: their
        # count starts again), everyone else kept theirs.
        calls = {o.site: o.message.metrics["calls"] for o in second if isinstance(o, Reply)}
        assert set(calls) == set(sites) - {"die"}
        assert set(calls.values()) <= {1.0, 2.0} and 2.0 in calls.values()
        third = _ask(fleet, sites, 3)  # the replacement worker serves on
        assert all(isinstance(o, Reply) for o in third)
    finally:
        fleet.close()


def test_a_site_killed_by_a_signal_is_named_with_it():
    class Killed(Counter):
        def on_evaluate(self, ins):
            os.kill(os.getpid(), 9)

    fleet = PoolFleet(["x", "y"], Killed, workers=1)
    try:
        (x, y) = _ask(fleet, ["x", "y"], 1)
    finally:
        fleet.close()
    assert isinstance(x, Failure) and "killed by signal SIGKILL" in x.reason
    assert isinstance(y, Failure) and "killed by signal SIGKILL" in y.reason  # it ran again
