"""GrpcFleet with real site connectors over loopback mutual TLS."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from grpc_site_helpers import (
    SITES,
    AddTrainer,
    ProbeRes,
    ProbeSite,
    SiteStarter,
    make_site,
    probe,
    wait_for,
)

from consortia.client.app import SiteApp
from consortia.core.messages import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    InvalidMessageError,
    TrainSettings,
)
from consortia.fleet.base import Failure, Reply, Timing, grace_failure
from consortia.fleet.grpc import GrpcFleet, JobEnded, SitesTimeoutError
from consortia.fleet.grpc.codec import WELCOME_REQUEST_ID


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
    out = list(fleet.send([(s, _fit(1, w, seed=7)) for s in order], Timing(5)))
    assert [o.site for o in out] == order
    assert all(isinstance(o, Reply) and isinstance(o.message, FitRes) for o in out)
    by_site = {o.site: o.message for o in out if isinstance(o, Reply)}
    for i, name in enumerate(SITES):
        res = by_site[name]
        assert (res.site, res.round, res.num_examples) == (name, 1, 10 * (i + 1))
        assert res.delta.dtype == np.float32
        np.testing.assert_array_equal(res.delta, np.full(5, i + 1, np.float32))
        assert res.metrics == {"lr": 0.25, "seed": 7.0}
    ev = list(fleet.send([("site-b", EvaluateIns(1, w))], Timing(5)))
    assert ev == [Reply("site-b", EvaluateRes("site-b", 1, 2, {"loss": 10.0}))]


def test_model_of_many_chunks_travels_exactly_both_ways(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    trainer = AddTrainer(step=0.5)
    start_site(fleet, make_site("site-a", trainer=trainer), chunk_bytes=48 * 1024)
    fleet.wait_for_sites(1, timeout=5)
    w = np.random.default_rng(1).standard_normal(200_003)  # float64: 1.6 MB, 25 chunks of 64 KiB
    (out,) = fleet.send([("site-a", _fit(3, w))], Timing(10))
    assert isinstance(out, Reply) and isinstance(out.message, FitRes)
    np.testing.assert_array_equal(trainer.seen[0], w)  # bit-exact after reassembly
    assert out.message.delta.dtype == np.float64
    np.testing.assert_array_equal(out.message.delta, (w + 0.5) - w)


def test_a_custom_kind_travels_site_and_back_with_every_field_exact(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    """A kind registered only in this test's helpers: two arrays of different dtypes (the
    uint8 one in one chunk, the float64 one in three, on one running chunk index) and text,
    int, bool, float and dict scalars, through a real GrpcFleet and run_site, with no
    transport code for it. The site's answer transforms every field it was sent, so both
    directions are checked exactly."""
    start_site(fleet, ProbeSite("site-a"), chunk_bytes=16 * 1024)
    fleet.wait_for_sites(1, timeout=5)
    ins = probe(round_=4)  # weights: 40 KB, 3 chunks of 16 KiB after the image's one
    (out,) = fleet.send([("site-a", ins)], Timing(5))
    assert isinstance(out, Reply), out
    res = out.message
    assert isinstance(res, ProbeRes)
    assert (res.site, res.round, res.label, res.count, res.strict) == (
        "site-a",
        4,
        "HÉLLO WÖRLD",
        -(2**40) + 1,
        False,
    )
    assert type(res.count) is int and type(res.strict) is bool
    assert res.tags == {"n": 3, "on": False, "x": 1.25, "t": "text", "seen_by": "site-a"}
    assert [type(res.tags[k]) for k in ("n", "on", "x", "t")] == [int, bool, float, str]
    assert res.image.dtype == np.uint8 and res.scores.dtype == np.float64
    np.testing.assert_array_equal(res.image, np.arange(256, dtype=np.uint8)[::-1])
    np.testing.assert_array_equal(res.scores, ins.weights * 0.5)  # bit-exact
    assert fleet.refusal_count == 0


class _Confused(SiteApp):
    """Answers a fit request with an evaluate reply; has no handler for probes."""

    def on_fit(self, ins: FitIns) -> EvaluateRes:
        return EvaluateRes(self.site_id, ins.round, 1, {"loss": 0.0})


def test_a_site_answering_with_another_kind_or_without_a_handler_fails_that_request(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, _Confused("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    (out,) = fleet.send([("site-a", _fit(1, np.zeros(2, np.float32)))], Timing(5))
    assert out == Failure(
        "site-a",
        "site reported: InvalidMessageError: the site answered a round 1 fit request with a "
        "round 1 evaluate message",
    )
    (out,) = fleet.send([("site-a", probe(round_=2))], Timing(5))
    assert out == Failure(
        "site-a",
        "site reported: InvalidMessageError: site site-a has no handler for 'grpc_probe' messages",
    )
    assert fleet.sites() == ["site-a"]


def test_an_unregistered_message_cannot_be_sent(fleet: GrpcFleet) -> None:
    with pytest.raises(InvalidMessageError, match="dict is not a registered message kind"):
        fleet.send([("site-a", {"round": 1})], Timing(1))


def test_an_unsendable_request_withdraws_the_ones_already_dispatched(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    slow = AddTrainer(sleep_s=30.0)
    start_site(fleet, make_site("site-a", trainer=slow))
    start_site(fleet, make_site("site-b"))
    fleet.wait_for_sites(2, timeout=5)
    # the join answer to the Welcome (request 0) is in before anything else is counted
    assert wait_for(lambda: WELCOME_REQUEST_ID not in fleet._sessions["site-a"]._pending)
    w = np.zeros(2, np.float32)
    bad = EvaluateIns(1, np.zeros(2, np.complex64))
    try:
        with pytest.raises(InvalidMessageError, match="dtype complex64 cannot travel"):
            fleet.send([("site-a", _fit(1, w)), ("site-b", bad)], Timing(5))
        # site-a's request went out before site-b's failed to encode: nobody will collect
        # it, so it must not stay open (and keep site-a busy) behind the caller's back.
        assert fleet._sessions["site-a"]._pending == {}
    finally:
        slow.wake.set()
    (out,) = fleet.send([("site-a", _fit(2, w))], Timing(5))
    assert isinstance(out, Reply) and out.message.round == 2


def test_unknown_site_fails_at_once_and_others_still_answer(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    w = np.zeros(2, np.float32)
    out = list(fleet.send([("nobody", _fit(1, w)), ("site-a", _fit(1, w))], Timing(5)))
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
    out = list(fleet.send([("site-a", _fit(1, w)), ("site-b", _fit(1, w))], Timing(0.6)))
    elapsed = time.monotonic() - t0
    assert 0.55 < elapsed < 1.2
    assert out[0] == Failure("site-a", "no reply within the 0.6 s deadline")
    assert isinstance(out[1], Reply)
    # The next round still works for both sites once site-a's old work is done or dropped.
    out2 = list(fleet.send([("site-a", _fit(2, w)), ("site-b", _fit(2, w))], Timing(5)))
    assert all(isinstance(o, Reply) for o in out2), out2
    assert [o.message.round for o in out2 if isinstance(o, Reply)] == [2, 2]
    # The site dropped its round-1 result on the server's Cancel: nothing late arrived.
    assert fleet.refusal_count == 0
    assert fleet.sites() == ["site-a", "site-b"]


def test_phase_ends_a_grace_period_after_its_minimum_of_replies(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    slow = AddTrainer(sleep_s=30.0)
    start_site(fleet, make_site("site-a"))
    start_site(fleet, make_site("site-b", trainer=slow))
    start_site(fleet, make_site("site-c"))
    fleet.wait_for_sites(3, timeout=5)
    w = np.zeros(3, np.float32)
    timing = Timing(deadline_s=60, min_replies=2, grace_s=0.5)
    try:
        t0 = time.monotonic()
        out = list(fleet.send([(s, _fit(1, w)) for s in SITES], timing))
        elapsed = time.monotonic() - t0
        assert elapsed < 3, f"the phase waited {elapsed:.1f} s for a site past its grace period"
        assert elapsed >= 0.5
        assert [o.site for o in out] == list(SITES)
        assert isinstance(out[0], Reply) and isinstance(out[2], Reply)
        assert out[1] == grace_failure("site-b", timing)
        assert "0.5 s grace period" in out[1].reason, out[1].reason
    finally:
        slow.wake.set()  # site-b's worker finishes round 1 (its result is dropped) at once
    # The slow site was told to drop its work; woken at once, it may have answered before
    # the Cancel reached it, and then its late answer (sent ahead of round 2's on the same
    # stream) is refused. Either way round 1 is closed and the next phase gets all three.
    out2 = list(fleet.send([(s, _fit(2, w)) for s in SITES], Timing(5)))
    assert all(isinstance(o, Reply) and o.message.round == 2 for o in out2), out2
    late = "reply for round 1 'fit' arrived after its deadline; refused"
    assert set(fleet.refusals) <= {("site-b", late)}


def test_without_a_minimum_the_grace_period_never_cuts_a_phase_short(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a"))
    start_site(fleet, make_site("site-b", trainer=AddTrainer(sleep_s=0.8)))
    fleet.wait_for_sites(2, timeout=5)
    w = np.zeros(3, np.float32)
    out = list(fleet.send([(s, _fit(1, w)) for s in SITES[:2]], Timing(5, grace_s=0.1)))
    assert all(isinstance(o, Reply) for o in out), out  # min_replies=0: no grace rule


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
    assert wait_for(lambda: fleet._sessions.get("site-a") not in (None, first))
    (out,) = fleet.send([("site-a", _fit(5, np.zeros(2, np.float32)))], Timing(5))
    assert isinstance(out, Reply) and out.message.round == 5


def test_stop_event_ends_run_site_and_the_server_notices(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    run = start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    run.stop.set()
    run.thread.join(3)
    assert not run.thread.is_alive()
    assert run.result is None  # stopped by its owner, not ended by the server
    assert wait_for(lambda: fleet.sites() == [], timeout=3)


def test_end_job_makes_run_site_return_how_the_job_ended(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    runs = [start_site(fleet, make_site(s)) for s in SITES[:2]]
    fleet.wait_for_sites(2, timeout=5)
    fleet.end_job("budget_exhausted")
    for run in runs:
        run.thread.join(5)
        assert not run.thread.is_alive(), "run_site kept running after the job ended"
        assert run.result == JobEnded("job-1", "budget_exhausted")
    assert wait_for(lambda: fleet.sites() == [], timeout=3)


def test_end_job_reaches_the_sites_even_when_the_server_closes_at_once(
    pki: Path, start_site: SiteStarter
) -> None:
    """How a run ends a job: ``end_job(status)`` then ``close()`` straight away."""
    f = GrpcFleet("127.0.0.1:0", job_id="job-2", pki_dir=pki, heartbeat_s=0.5)
    try:
        run = start_site(f, make_site("site-a"))
        f.wait_for_sites(1, timeout=5)
    finally:
        f.end_job("completed")
        f.close()
    run.thread.join(5)
    assert not run.thread.is_alive(), "the site never heard that the job was over"
    assert run.result == JobEnded("job-2", "completed")


def test_keep_alive_site_stays_for_the_next_job_until_stopped(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    run = start_site(fleet, make_site("site-a"), keep_alive=True)
    fleet.wait_for_sites(1, timeout=5)
    first = fleet._sessions["site-a"]
    fleet.end_job("completed")
    # It hangs up on the ended job and dials in again, ready for the next one.
    assert wait_for(lambda: fleet._sessions.get("site-a") not in (None, first))
    run.thread.join(0.5)
    assert run.thread.is_alive(), "a keep_alive site returned when the job ended"
    (out,) = fleet.send([("site-a", _fit(1, np.zeros(2, np.float32)))], Timing(5))
    assert isinstance(out, Reply)
    run.stop.set()
    run.thread.join(5)
    assert not run.thread.is_alive()
    assert run.result == JobEnded("job-1", "completed")


def test_a_site_without_evaluation_data_answers_with_empty_metrics(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a", n_eval=0))
    fleet.wait_for_sites(1, timeout=5)
    (out,) = fleet.send([("site-a", EvaluateIns(1, np.zeros(2, np.float32)))], Timing(5))
    assert out == Reply("site-a", EvaluateRes("site-a", 1, 0, {}))


def test_site_code_that_raises_becomes_a_failure_naming_the_error(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    class Broken(AddTrainer):
        def fit(self, *a: object, **k: object) -> tuple[np.ndarray, dict[str, float]]:
            raise RuntimeError("disk full")

    start_site(fleet, make_site("site-a", trainer=Broken()))
    fleet.wait_for_sites(1, timeout=5)
    (out,) = fleet.send([("site-a", _fit(1, np.zeros(2, np.float32)))], Timing(5))
    assert out == Failure("site-a", "site reported: RuntimeError: disk full")
    (ok,) = fleet.send([("site-a", EvaluateIns(1, np.zeros(2, np.float32)))], Timing(5))
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
        (out,) = f.send([("site-a", _fit(1, np.ones(2, np.float32)))], Timing(5))
        assert isinstance(out, Reply)
        np.testing.assert_array_equal(out.message.delta, [1, 1])
    finally:
        f.close()


class _KeepingSite(SiteApp):
    """Keeps every model it is sent, as received (no copy), and answers with a delta that
    names the round; so a receive buffer reused too early would show in what it kept."""

    def __init__(self, site_id: str) -> None:
        super().__init__(site_id)
        self.kept: list[np.ndarray] = []

    def on_fit(self, ins: FitIns) -> FitRes:
        self.kept.append(ins.weights)
        return FitRes(self.site_id, ins.round, np.full_like(ins.weights, -ins.round), 1, {})


def test_models_and_updates_kept_from_earlier_rounds_are_never_overwritten(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    site = _KeepingSite("site-a")
    start_site(fleet, site)
    fleet.wait_for_sites(1, timeout=5)
    n = 2**20  # 4 MiB of float32: large enough for the receive buffers to be pooled
    kept_replies: list[np.ndarray] = []
    for r in range(1, 5):
        (out,) = fleet.send([("site-a", _fit(r, np.full(n, float(r), np.float32)))], Timing(10))
        assert isinstance(out, Reply) and isinstance(out.message, FitRes)
        kept_replies.append(out.message.delta)
    for r, (model, delta) in enumerate(zip(site.kept, kept_replies, strict=True), start=1):
        assert model[0] == model[-1] == r and np.all(model == r)
        assert np.all(delta == -r)
    # Every array is its own memory: nothing kept was lent out again.
    arrays = [*site.kept, *kept_replies]
    assert len({int(a.__array_interface__["data"][0]) for a in arrays}) == len(arrays)


def test_replies_nobody_keeps_land_in_the_same_memory_round_after_round(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    n = 2**20
    addresses = set()
    for r in range(1, 6):
        w = np.full(n, float(r), np.float32)
        (out,) = fleet.send([("site-a", _fit(r, w))], Timing(10))
        assert isinstance(out, Reply) and isinstance(out.message, FitRes)
        np.testing.assert_array_equal(out.message.delta, np.ones(n, np.float32))
        assert not out.message.delta.flags.writeable  # checked on arrival and vouched for
        addresses.add(int(out.message.delta.__array_interface__["data"][0]))
        del out
    assert len(addresses) == 1
    assert fleet.buffers.retained_bytes == 4 * n


def test_two_requests_to_one_site_in_one_call_are_told_apart(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a", trainer=AddTrainer(step=1)))
    fleet.wait_for_sites(1, timeout=5)
    w = np.zeros(3, np.float32)
    out = list(fleet.send([("site-a", _fit(1, w)), ("site-a", EvaluateIns(1, w))], Timing(10)))
    assert [type(o.message).__name__ for o in out if isinstance(o, Reply)] == [
        "FitRes",
        "EvaluateRes",
    ]
