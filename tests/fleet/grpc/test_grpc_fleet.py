"""GrpcFleet with real site connectors over loopback mutual TLS."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from grpc_site_helpers import SITES, AddTrainer, SiteStarter, make_site

from consortia.core.messages import EvaluateIns, EvaluateRes, FitIns, FitRes, TrainSettings
from consortia.fleet.base import Failure, Reply
from consortia.fleet.grpc import GrpcFleet, SitesTimeoutError


def _fit(round_: int, w: np.ndarray, seed: int = 0) -> FitIns:
    return FitIns(round_, w, TrainSettings(lr=0.25), seed)


def test_three_sites_answer_fit_and_evaluate_in_request_order(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    for i, name in enumerate(SITES):
        start_site(fleet, make_site(name, n=10 * (i + 1), trainer=AddTrainer(step=i + 1)))
    assert fleet.wait_for_sites(3, timeout=5) == list(SITES)
    w = np.arange(5, dtype=np.float32)
    order = ["site-c", "site-a", "site-b"]
    out = list(fleet.send([(s, _fit(1, w, seed=7)) for s in order], deadline_s=5))
    assert [o.site for o in out] == order
    assert all(isinstance(o, Reply) and isinstance(o.message, FitRes) for o in out)
    by_site = {o.site: o.message for o in out if isinstance(o, Reply)}
    for i, name in enumerate(SITES):
        res = by_site[name]
        assert (res.site, res.round, res.num_examples) == (name, 1, 10 * (i + 1))
        assert res.delta.dtype == np.float32
        np.testing.assert_array_equal(res.delta, np.full(5, i + 1, np.float32))
        assert res.metrics == {"lr": 0.25, "seed": 7.0}
    ev = list(fleet.send([("site-b", EvaluateIns(1, w))], deadline_s=5))
    assert ev == [Reply("site-b", EvaluateRes("site-b", 1, 2, {"loss": 10.0}))]


def test_model_of_many_chunks_travels_exactly_both_ways(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    trainer = AddTrainer(step=0.5)
    start_site(fleet, make_site("site-a", trainer=trainer), chunk_bytes=48 * 1024)
    fleet.wait_for_sites(1, timeout=5)
    w = np.random.default_rng(1).standard_normal(200_003)  # float64: 1.6 MB, 25 chunks of 64 KiB
    (out,) = fleet.send([("site-a", _fit(3, w))], deadline_s=10)
    assert isinstance(out, Reply) and isinstance(out.message, FitRes)
    np.testing.assert_array_equal(trainer.seen[0], w)  # bit-exact after reassembly
    assert out.message.delta.dtype == np.float64
    np.testing.assert_array_equal(out.message.delta, (w + 0.5) - w)


def test_unknown_site_fails_at_once_and_others_still_answer(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    w = np.zeros(2, np.float32)
    out = list(fleet.send([("nobody", _fit(1, w)), ("site-a", _fit(1, w))], deadline_s=5))
    assert out[0] == Failure("nobody", "not connected")
    assert isinstance(out[1], Reply)


def test_slow_site_fails_at_the_deadline_and_is_told_to_drop_its_work(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a", trainer=AddTrainer(sleep_s=1.0)))
    start_site(fleet, make_site("site-b"))
    fleet.wait_for_sites(2, timeout=5)
    w = np.zeros(3, np.float32)
    t0 = time.monotonic()
    out = list(fleet.send([("site-a", _fit(1, w)), ("site-b", _fit(1, w))], deadline_s=0.6))
    elapsed = time.monotonic() - t0
    assert 0.55 < elapsed < 1.2
    assert out[0] == Failure("site-a", "no reply within the 0.6 s deadline")
    assert isinstance(out[1], Reply)
    # The next round still works for both sites once site-a's old work is done or dropped.
    out2 = list(fleet.send([("site-a", _fit(2, w)), ("site-b", _fit(2, w))], deadline_s=5))
    assert all(isinstance(o, Reply) for o in out2), out2
    assert [o.message.round for o in out2 if isinstance(o, Reply)] == [2, 2]
    # The site dropped its round-1 result on the server's Cancel: nothing late arrived.
    assert fleet.refusal_count == 0
    assert fleet.sites() == ["site-a", "site-b"]


def test_wait_for_sites_times_out_with_a_clear_error(fleet: GrpcFleet) -> None:
    with pytest.raises(SitesTimeoutError, match="only 0 of 2 sites connected"):
        fleet.wait_for_sites(2, timeout=0.2)


def test_site_reconnects_by_itself_after_its_connection_drops(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    first = fleet._sessions["site-a"]
    first.close("test cut the connection")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        s = fleet._sessions.get("site-a")
        if s is not None and s is not first:
            break
        time.sleep(0.02)
    assert fleet._sessions["site-a"] is not first
    (out,) = fleet.send([("site-a", _fit(5, np.zeros(2, np.float32)))], deadline_s=5)
    assert isinstance(out, Reply) and out.message.round == 5


def test_stop_event_ends_run_site_and_the_server_notices(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    t, stop = start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    stop.set()
    t.join(3)
    assert not t.is_alive()
    end = time.monotonic() + 3
    while fleet.sites() and time.monotonic() < end:
        time.sleep(0.02)
    assert fleet.sites() == []


def test_site_code_that_raises_becomes_a_failure_naming_the_error(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    class Broken(AddTrainer):
        def fit(self, *a: object, **k: object) -> tuple[np.ndarray, dict[str, float]]:
            raise RuntimeError("disk full")

    start_site(fleet, make_site("site-a", trainer=Broken()))
    fleet.wait_for_sites(1, timeout=5)
    (out,) = fleet.send([("site-a", _fit(1, np.zeros(2, np.float32)))], deadline_s=5)
    assert out == Failure("site-a", "site reported: RuntimeError: disk full")
    (ok,) = fleet.send([("site-a", EvaluateIns(1, np.zeros(2, np.float32)))], deadline_s=5)
    assert isinstance(ok, Reply)  # the site keeps serving


def test_insecure_mode_works_and_warns(
    start_site: SiteStarter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        f = GrpcFleet("127.0.0.1:0", job_id="j", insecure=True, heartbeat_s=0.5)
    try:
        assert "INSECURE" in caplog.text
        start_site(f, make_site("site-a"), site_dir=Path("/nonexistent"), insecure=True)
        f.wait_for_sites(1, timeout=5)
        (out,) = f.send([("site-a", _fit(1, np.ones(2, np.float32)))], deadline_s=5)
        assert isinstance(out, Reply)
        np.testing.assert_array_equal(out.message.delta, [1, 1])
    finally:
        f.close()
