"""Hostile or broken sites: every bad message is refused with a logged reason, the server
keeps serving, and nothing a well-behaved site gets changes."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_site_helpers import SiteStarter, make_site
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortia.core.messages import EvaluateIns, FitIns, FitRes, TrainSettings
from consortia.fleet.base import Failure, Reply
from consortia.fleet.grpc import GrpcFleet, codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.client import connect_method
from consortia.fleet.grpc.credentials import site_credentials
from consortia.fleet.grpc.session import Pending, Session

W = np.arange(6, dtype=np.float32)


class RawSite:
    """A site that speaks the protocol by hand, so tests can send anything."""

    def __init__(self, fleet: GrpcFleet, site_dir: Path, hello: bool = True) -> None:
        self._out: queue.Queue[pb.SiteMessage | None] = queue.Queue()
        self.received: queue.Queue[pb.ServerMessage] = queue.Queue()
        self.channel = grpc.secure_channel(fleet.address, site_credentials(site_dir))
        self.call = connect_method(self.channel, pb.SiteMessage.SerializeToString)(self._requests())
        self.error: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if hello:
            self.send(pb.SiteMessage(hello=pb.Hello(protocol_version=1, max_chunk_bytes=2**20)))
            assert self.recv("welcome").welcome.site_name == "hostile"

    def _requests(self) -> Iterator[pb.SiteMessage]:
        while (m := self._out.get()) is not None:
            yield m

    def _read(self) -> None:
        try:
            for m in self.call:
                self.received.put(m)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, m: pb.SiteMessage) -> None:
        self._out.put(m)

    def recv(self, kind: str, timeout: float = 5) -> pb.ServerMessage:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                m = self.received.get(timeout=0.1)
            except queue.Empty:
                continue
            if m.WhichOneof("kind") == kind:
                return m
        raise AssertionError(f"no {kind} message within {timeout} s")

    def close(self) -> None:
        self._out.put(None)
        self._reader.join(3)
        self.channel.close()


def _reply(req: pb.Request, **changes: object) -> pb.SiteMessage:
    b = pb.Binding()
    b.CopyFrom(req.binding)
    for k, v in changes.items():
        setattr(b, k, v)
    vec = pb.VectorInfo(length=req.vector.length, dtype=req.vector.dtype, num_chunks=1)
    return pb.SiteMessage(reply=pb.Reply(binding=b, vector=vec, fit=pb.FitResult(num_examples=3)))


def _chunk(rid: int, values: np.ndarray) -> pb.SiteMessage:
    return pb.SiteMessage(chunk=pb.Chunk(request_id=rid, index=0, data=values.tobytes()))


def _fit_round(fleet: GrpcFleet, raw: RawSite, round_: int) -> tuple[Iterator[object], pb.Request]:
    """Ask the hostile site (and nobody else) for a fit; return the outcome stream + request."""
    outcomes = fleet.send([("hostile", FitIns(round_, W, TrainSettings(), 0))], deadline_s=3)
    req = raw.recv("request").request
    raw.recv("chunk")
    return iter(outcomes), req


def _wait_refusals(fleet: GrpcFleet, n: int) -> list[str]:
    end = time.monotonic() + 3
    while fleet.refusal_count < n and time.monotonic() < end:
        time.sleep(0.01)
    return [r for _, r in fleet.refusals]


@pytest.fixture()
def raw(fleet: GrpcFleet, pki: Path) -> Iterator[RawSite]:
    r = RawSite(fleet, pki / "sites" / "hostile")
    yield r
    r.close()


def test_valid_hand_made_reply_is_accepted(fleet: GrpcFleet, raw: RawSite) -> None:
    outcomes, req = _fit_round(fleet, raw, 1)
    raw.send(_reply(req))
    raw.send(_chunk(req.binding.request_id, np.full(6, 2, np.float32)))
    (out,) = list(outcomes)
    assert isinstance(out, Reply) and isinstance(out.message, FitRes)
    assert (out.message.site, out.message.round, out.message.num_examples) == ("hostile", 1, 3)
    np.testing.assert_array_equal(out.message.delta, np.full(6, 2, np.float32))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("nan", "invalid reply: vector holds NaN or infinite values"),
        ("short", "invalid reply: all 1 chunks arrived with 20 of 24 bytes"),
        ("wrong_length", "invalid reply: update announces 5 values"),
        ("wrong_dtype", "invalid reply: update announces 6 values of dtype code 3"),
        ("wrong_body", "invalid reply: a evaluate body does not answer round 1 fit"),
        ("wrong_round", "invalid reply: binding says round 9 phase 1, request was round 1 fit"),
        ("bad_metric", "invalid reply: metric 'loss' is not finite (nan)"),
        ("site_error", "site reported: I refuse"),
    ],
)
def test_bad_reply_fails_that_request_with_its_reason(
    fleet: GrpcFleet, raw: RawSite, name: str, reason: str
) -> None:
    outcomes, req = _fit_round(fleet, raw, 1)
    rid = req.binding.request_id
    m = _reply(req)
    values = np.ones(6, np.float32)
    if name == "nan":
        values[2] = np.nan
    elif name == "short":
        values = values[:5]
    elif name == "wrong_length":
        m.reply.vector.length = 5
    elif name == "wrong_dtype":
        m.reply.vector.dtype = pb.DTYPE_FLOAT64
    elif name == "wrong_body":
        m.reply.evaluate.num_examples = 1
    elif name == "wrong_round":
        m.reply.binding.round = 9
    elif name == "bad_metric":
        m.reply.fit.metrics["loss"] = float("nan")
    elif name == "site_error":
        m.reply.error.reason = "I refuse"
    raw.send(m)
    raw.send(_chunk(rid, values))
    (out,) = list(outcomes)
    assert isinstance(out, Failure)
    assert out.reason.startswith(reason), out.reason
    assert fleet.sites() == ["hostile"]  # still connected: one bad reply fails one request


def test_duplicate_stale_foreign_and_stray_messages_are_refused_and_logged(
    fleet: GrpcFleet, raw: RawSite, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes, req1 = _fit_round(fleet, raw, 1)
    good = np.full(6, 1, np.float32)
    raw.send(_reply(req1))
    raw.send(_chunk(req1.binding.request_id, good))
    (first,) = list(outcomes)
    assert isinstance(first, Reply)
    outcomes2, req2 = _fit_round(fleet, raw, 2)
    # Replay round 1's reply (duplicate and stale), then junk, then the real round-2 reply.
    raw.send(_reply(req1))
    raw.send(_chunk(req1.binding.request_id, np.full(6, 99, np.float32)))
    raw.send(_reply(req2, job_id="other-job"))
    raw.send(_reply(req2, request_id=10_000))
    raw.send(_chunk(777, good))
    raw.send(pb.SiteMessage(hello=pb.Hello(site_name="site-a", protocol_version=1)))
    raw.send(pb.SiteMessage())
    raw.send(_reply(req2))
    raw.send(_chunk(req2.binding.request_id, np.full(6, 5, np.float32)))
    (second,) = list(outcomes2)
    assert isinstance(second, Reply) and second.message.round == 2
    np.testing.assert_array_equal(second.message.delta, np.full(6, 5, np.float32))
    reasons = _wait_refusals(fleet, 6)
    assert reasons == [
        f"second reply for round 1 fit (request {req1.binding.request_id}) refused",
        "reply for job 'other-job', this server runs 'job-1'",
        "reply for round 2 fit matches no open request (10000)",
        "chunk for request 777 that is not arriving",
        "unexpected hello message after hello",
        "unexpected empty message after hello",
    ]
    assert "refused from hostile: second reply for round 1 fit" in caplog.text


def test_reply_after_the_deadline_and_stale_round_are_refused(
    fleet: GrpcFleet, raw: RawSite
) -> None:
    outcomes = fleet.send([("hostile", FitIns(1, W, TrainSettings(), 0))], deadline_s=0.3)
    req1 = raw.recv("request").request
    (out,) = list(outcomes)
    assert out == Failure("hostile", "no reply within the 0.3 s deadline")
    assert raw.recv("cancel").cancel.request_id == req1.binding.request_id
    raw.send(_reply(req1))
    stale = _reply(req1, request_id=5_000, round=0)
    raw.send(stale)
    assert _wait_refusals(fleet, 2) == [
        "reply for round 1 fit arrived after its deadline; refused",
        "stale reply for round 0 fit; the federation is at round 1",
    ]


def test_first_message_must_be_hello(fleet: GrpcFleet, pki: Path) -> None:
    r = RawSite(fleet, pki / "sites" / "hostile", hello=False)
    r.send(pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=1)))
    r._reader.join(3)
    r.close()
    assert r.error is not None and r.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "first message must be hello" in (r.error.details() or "")


def _raw_connect(fleet: GrpcFleet, pki: Path, frames: list[bytes]) -> tuple[list[str], object]:
    """Send raw byte frames on one stream; return the kinds received and the final status."""
    with grpc.secure_channel(fleet.address, site_credentials(pki / "sites" / "hostile")) as ch:
        connect = ch.stream_stream(
            "/consortia.v1.Federation/Connect",
            request_serializer=lambda b: b,
            response_deserializer=pb.ServerMessage.FromString,
        )
        kinds: list[str] = []
        try:
            for m in connect(iter(frames), timeout=5):
                kinds.append(m.WhichOneof("kind"))
        except grpc.RpcError as exc:
            return kinds, exc.code()
        return kinds, grpc.StatusCode.OK


HELLO = pb.SiteMessage(hello=pb.Hello(protocol_version=1)).SerializeToString()


def test_garbage_bytes_are_refused_with_a_reason_and_the_stream_survives(
    fleet: GrpcFleet, pki: Path
) -> None:
    garbage = b"\xff\xfe garbage \x00" * 10
    kinds, status = _raw_connect(fleet, pki, [garbage])
    assert (kinds, status) == ([], grpc.StatusCode.PERMISSION_DENIED)
    kinds, status = _raw_connect(fleet, pki, [HELLO, garbage, garbage])
    assert kinds[0] == "welcome" and status == grpc.StatusCode.OK  # ended by us, not by gRPC
    reasons = _wait_refusals(fleet, 3)
    assert reasons[0].endswith("connection refused: the first message must be hello")
    assert reasons[1].startswith("malformed message of 120 bytes (Error parsing message")
    assert reasons[1] == reasons[2]


def test_oversize_message_ends_only_that_connection(
    fleet: GrpcFleet, pki: Path, start_site: SiteStarter
) -> None:
    start_site(fleet, make_site("site-a"))
    fleet.wait_for_sites(1, timeout=5)
    honest = fleet._sessions["site-a"]
    too_big = fleet.chunk_bytes + codec.MESSAGE_OVERHEAD_BYTES + 1
    big = pb.SiteMessage(chunk=pb.Chunk(request_id=1, data=b"\0" * too_big)).SerializeToString()
    _, status = _raw_connect(fleet, pki, [HELLO, big])
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own size cap
    (out,) = fleet.send([("site-a", EvaluateIns(1, W))], deadline_s=5)
    assert isinstance(out, Reply)  # the server kept serving the honest site
    assert fleet._sessions["site-a"] is honest


# ---- property: no sequence of messages can break a session ------------------------------

_ids = st.sampled_from([1, 2, 3, 99])
_bindings = st.builds(
    pb.Binding,
    job_id=st.sampled_from(["job-1", "other", ""]),
    round=st.integers(0, 4),
    phase=st.integers(0, 4),
    request_id=_ids,
)
_vectors = st.builds(
    pb.VectorInfo,
    length=st.sampled_from([0, 5, 6, 7, 2**40]),
    dtype=st.integers(0, 5),
    num_chunks=st.integers(0, 3),
)
_metrics = st.dictionaries(
    st.text(max_size=3), st.sampled_from([0.0, 1.5, float("nan"), float("inf")]), max_size=3
)
_replies = st.builds(
    lambda b, v, body, n, m, reason: pb.Reply(
        binding=b,
        vector=v,
        **{
            "fit": {"fit": pb.FitResult(num_examples=n, metrics=m)},
            "evaluate": {"evaluate": pb.EvaluateResult(num_examples=n, metrics=m)},
            "error": {"error": pb.SiteError(reason=reason)},
            "none": {},
        }[body],
    ),
    _bindings,
    _vectors,
    st.sampled_from(["fit", "evaluate", "error", "none"]),
    st.sampled_from([0, 3, 2**60]),
    _metrics,
    st.text(max_size=5),
)
_chunks = st.builds(
    pb.Chunk,
    request_id=_ids,
    index=st.integers(0, 2),
    data=st.one_of(
        st.binary(max_size=30),
        st.sampled_from([np.ones(6, np.float32).tobytes(), np.ones(3, np.float32).tobytes()]),
    ),
)
# Well-formed answers to the two open requests of the property test below, mixed in so
# that sequences also reach the accept paths (and their interplay with junk).
_GOOD_FIT = pb.SiteMessage(
    reply=pb.Reply(
        binding=pb.Binding(job_id="job-1", round=2, phase=pb.PHASE_FIT, request_id=1),
        vector=pb.VectorInfo(length=6, dtype=pb.DTYPE_FLOAT32, num_chunks=1),
        fit=pb.FitResult(num_examples=4, metrics={"loss": 0.5}),
    )
)
_GOOD_CHUNK = pb.SiteMessage(
    chunk=pb.Chunk(request_id=1, index=0, data=np.ones(6, np.float32).tobytes())
)
_GOOD_EVAL = pb.SiteMessage(
    reply=pb.Reply(
        binding=pb.Binding(job_id="job-1", round=2, phase=pb.PHASE_EVALUATE, request_id=2),
        evaluate=pb.EvaluateResult(num_examples=2, metrics={"acc": 1.0}),
    )
)
_messages = st.one_of(
    st.sampled_from([_GOOD_FIT, _GOOD_CHUNK, _GOOD_EVAL]),
    st.builds(lambda r: pb.SiteMessage(reply=r), _replies),
    st.builds(lambda c: pb.SiteMessage(chunk=c), _chunks),
    st.just(pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=1))),
    st.just(pb.SiteMessage(hello=pb.Hello(site_name="x"))),
    st.just(pb.SiteMessage()),
)


@pytest.fixture(scope="module")
def bare_fleet() -> Iterator[GrpcFleet]:
    f = GrpcFleet("127.0.0.1:0", job_id="job-1", insecure=True, chunk_bytes=1024)
    yield f
    f.close()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(msgs=st.lists(_messages, min_size=5, max_size=15))
def test_any_message_sequence_leaves_the_session_consistent(
    bare_fleet: GrpcFleet, msgs: list[pb.SiteMessage]
) -> None:
    """>= 1000 hostile messages in all (120 sequences of 5-15): none raises, each open
    request ends at most once, and every accepted reply is exactly well-formed."""
    session = Session(bare_fleet, "s", chunk_bytes=1024)
    fit = Pending(1, "s", FitIns(2, W, TrainSettings(), 0), pb.PHASE_FIT)
    ev = Pending(2, "s", EvaluateIns(2, W), pb.PHASE_EVALUATE)
    session.submit(fit)
    session.submit(ev)
    for m in msgs:
        session.on_message(pb.SiteMessage.FromString(m.SerializeToString()))
    for p in (fit, ev):
        out = p.outcome
        if isinstance(out, Reply):
            res = out.message
            assert res.site == "s" and res.round == 2
            assert res.num_examples <= codec.MAX_EXAMPLES
            assert all(np.isfinite(v) for v in res.metrics.values())
            if isinstance(res, FitRes):  # only the well-formed pair can be accepted
                assert (res.num_examples, res.metrics) == (4, {"loss": 0.5})
                assert res.delta.dtype == np.float32
                np.testing.assert_array_equal(res.delta, np.ones(6, np.float32))
            else:  # any evaluate reply the sequence sent for request 2 may be the one taken
                sent = [
                    (m.reply.evaluate.num_examples, dict(m.reply.evaluate.metrics))
                    for m in msgs
                    if m.WhichOneof("kind") == "reply"
                    and m.reply.WhichOneof("body") == "evaluate"
                    and m.reply.binding.request_id == 2
                ]
                assert (res.num_examples, res.metrics) in sent
        else:
            assert out is None or isinstance(out, Failure)
    session.close("end of example")
    assert fit.done.is_set() and ev.done.is_set()


def test_good_answers_are_accepted_between_junk_messages(bare_fleet: GrpcFleet) -> None:
    """The accept paths the property test can reach, checked deterministically."""
    session = Session(bare_fleet, "s", chunk_bytes=1024)
    fit = Pending(1, "s", FitIns(2, W, TrainSettings(), 0), pb.PHASE_FIT)
    ev = Pending(2, "s", EvaluateIns(2, W), pb.PHASE_EVALUATE)
    session.submit(fit)
    session.submit(ev)
    junk = pb.SiteMessage(chunk=pb.Chunk(request_id=99, data=b"x"))
    for m in (_GOOD_FIT, junk, pb.SiteMessage(heartbeat=pb.Heartbeat()), _GOOD_CHUNK, _GOOD_EVAL):
        session.on_message(m)
    assert isinstance(fit.outcome, Reply) and isinstance(ev.outcome, Reply)
    np.testing.assert_array_equal(fit.outcome.message.delta, np.ones(6, np.float32))
    assert ev.outcome.message.metrics == {"acc": 1.0}
    session.close("done")


_frames = st.one_of(
    _messages.map(lambda m: m.SerializeToString()),
    st.binary(max_size=64),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(_frames, min_size=34, max_size=40))
def test_live_server_survives_1000_hostile_frames_and_keeps_its_state(
    live: tuple[GrpcFleet, Path], frames: list[bytes]
) -> None:
    """30 connections x 34-40 frames (>= 1020 frames) of hostile messages and raw bytes over
    real mutual TLS; the honest site's connection and answers are untouched throughout."""
    fleet, pki = live
    honest = fleet._sessions["site-a"]
    _, status = _raw_connect(fleet, pki, [HELLO, *frames])
    assert status in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert fleet._sessions["site-a"] is honest
    assert fleet.sites() == ["site-a"]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GrpcFleet, Path]]:
    """One live server for the whole fuzz run, with an honest site; checked after the run."""
    from consortia.fleet.grpc import run_site
    from consortia.security.pki import add_site, init_pki

    d = init_pki(tmp_path_factory.mktemp("live") / "pki")
    add_site(d, "site-a")
    add_site(d, "hostile")
    fleet = GrpcFleet("127.0.0.1:0", job_id="job-1", pki_dir=d, heartbeat_s=0.5, chunk_bytes=4096)
    stop = threading.Event()
    t = threading.Thread(
        target=run_site,
        args=(fleet.address, make_site("site-a"), d / "sites" / "site-a"),
        kwargs={"stop": stop, "heartbeat_s": 0.5},
        daemon=True,
    )
    t.start()
    fleet.wait_for_sites(1, timeout=5)
    before = fleet.refusal_count
    yield fleet, d
    # After every hostile frame: still up, same honest connection, same exact answers.
    assert fleet.refusal_count - before >= 500
    w = np.arange(3000, dtype=np.float32)  # several 4 KiB chunks
    (out,) = fleet.send([("site-a", FitIns(7, w, TrainSettings(), 0))], deadline_s=5)
    assert isinstance(out, Reply) and out.message.round == 7
    np.testing.assert_array_equal(out.message.delta, np.ones(3000, np.float32))
    stop.set()
    t.join(5)
    fleet.close()
