"""Hostile or broken sites: every bad message is refused with a logged reason, the server
keeps serving, and nothing a well-behaved site gets changes."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_site_helpers import ProbeIns, ProbeRes, SiteStarter, make_site
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortia.core.messages import (
    MAX_EXAMPLES,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    InvalidMessageError,
    TrainSettings,
    check_reply,
    encode,
    kind_of,
)
from consortia.fleet.base import Failure, Reply, Timing
from consortia.fleet.grpc import GrpcFleet, codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.client import connect_method
from consortia.fleet.grpc.credentials import site_credentials
from consortia.fleet.grpc.session import REPLY_BYTES_FLOOR, Pending, Session
from consortia.server.phases import Phase, run_phase

W = np.arange(6, dtype=np.float32)
V = codec.PROTOCOL_VERSION


class RawSite:
    """A site that speaks the protocol by hand, so tests can send anything."""

    def __init__(self, fleet: GrpcFleet, site_dir: Path, hello: bool = True) -> None:
        self._out: queue.Queue[pb.SiteMessage | None] = queue.Queue()
        self.received: queue.Queue[pb.ServerMessage] = queue.Queue()
        self.channel = grpc.secure_channel(fleet.address, site_credentials(site_dir))
        method = connect_method(
            self.channel, pb.SiteMessage.SerializeToString, pb.ServerMessage.FromString
        )
        self.call = method(self._requests())
        self.error: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if hello:
            self.send(pb.SiteMessage(hello=pb.Hello(protocol_version=V, max_chunk_bytes=2**20)))
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


def _fit_payload(n: int = 6, num_examples: int = 3) -> pb.Payload:
    """A well-formed fit reply body: the update announced, one example count, one metric."""
    return pb.Payload(
        arrays=[pb.ArrayInfo(name="delta", length=n, dtype=pb.DTYPE_FLOAT32, num_chunks=1)],
        scalars={
            "num_examples": pb.Scalar(integer=num_examples),
            "metrics[loss]": pb.Scalar(number=0.5),
        },
    )


def _reply(req: pb.Request, **changes: object) -> pb.SiteMessage:
    b = pb.Binding()
    b.CopyFrom(req.binding)
    for k, v in changes.items():
        setattr(b, k, v)
    return pb.SiteMessage(
        reply=pb.Reply(binding=b, payload=_fit_payload(req.payload.arrays[0].length))
    )


def _chunk(rid: int, values: np.ndarray, index: int = 0) -> pb.SiteMessage:
    return pb.SiteMessage(chunk=pb.Chunk(request_id=rid, index=index, data=values.tobytes()))


def _fit_round(
    fleet: GrpcFleet, raw: RawSite, round_: int, deadline_s: float = 3
) -> tuple[Iterator[Any], pb.Request]:
    """Ask the hostile site (and nobody else) for a fit; return the outcome stream + request."""
    outcomes = fleet.send([("hostile", FitIns(round_, W, TrainSettings(), 0))], Timing(deadline_s))
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


def test_the_request_is_one_generic_payload_with_its_kind_in_the_binding(
    fleet: GrpcFleet, raw: RawSite
) -> None:
    outcomes, req = _fit_round(fleet, raw, 1, deadline_s=0.2)
    assert list(outcomes) == [Failure("hostile", "no reply within the 0.2 s deadline")]
    b = req.binding
    assert (b.job_id, b.round, b.kind) == ("job-1", 1, "fit")
    assert [(a.name, a.length, a.dtype, a.num_chunks) for a in req.payload.arrays] == [
        ("weights", 6, pb.DTYPE_FLOAT32, 1)
    ]
    assert req.payload.scalars["seed"].integer == 0
    assert req.payload.scalars["settings.lr"].number == 0.01
    assert "round" not in req.payload.scalars  # the round travels in the binding only


def test_valid_hand_made_reply_is_accepted(fleet: GrpcFleet, raw: RawSite) -> None:
    outcomes, req = _fit_round(fleet, raw, 1)
    raw.send(_reply(req))
    raw.send(_chunk(req.binding.request_id, np.full(6, 2, np.float32)))
    (out,) = list(outcomes)
    assert isinstance(out, Reply) and isinstance(out.message, FitRes)
    assert (out.message.site, out.message.round, out.message.num_examples) == ("hostile", 1, 3)
    assert out.message.metrics == {"loss": 0.5}
    np.testing.assert_array_equal(out.message.delta, np.full(6, 2, np.float32))


def _array(name: str = "delta", length: int = 6, dtype: int = pb.DTYPE_FLOAT32) -> pb.ArrayInfo:
    return pb.ArrayInfo(name=name, length=length, dtype=dtype, num_chunks=1)


def _set_arrays(*arrays: pb.ArrayInfo) -> Callable[[pb.SiteMessage], None]:
    def edit(m: pb.SiteMessage) -> None:
        del m.reply.payload.arrays[:]
        m.reply.payload.arrays.extend(arrays)

    return edit


def _set_scalar(name: str, value: pb.Scalar) -> Callable[[pb.SiteMessage], None]:
    def edit(m: pb.SiteMessage) -> None:
        m.reply.payload.scalars[name].CopyFrom(value)

    return edit


def _drop_scalar(name: str) -> Callable[[pb.SiteMessage], None]:
    def edit(m: pb.SiteMessage) -> None:
        del m.reply.payload.scalars[name]

    return edit


def _many_scalars(m: pb.SiteMessage) -> None:
    for i in range(codec.MAX_SCALARS):
        m.reply.payload.scalars[f"metrics[m{i}]"].number = 1.0


def _many_arrays(m: pb.SiteMessage) -> None:
    m.reply.payload.arrays.extend(_array(f"x{i}", 0) for i in range(codec.MAX_ARRAYS))


def _error(m: pb.SiteMessage) -> None:
    m.reply.error.reason = "I refuse"


def _no_body(m: pb.SiteMessage) -> None:
    m.reply.ClearField("payload")


def _binding(**changes: object) -> Callable[[pb.SiteMessage], None]:
    def edit(m: pb.SiteMessage) -> None:
        for k, v in changes.items():
            setattr(m.reply.binding, k, v)

    return edit


def _chunk_count(n: int) -> Callable[[pb.SiteMessage], None]:
    def edit(m: pb.SiteMessage) -> None:
        m.reply.payload.arrays[0].num_chunks = n

    return edit


def _keep(m: pb.SiteMessage) -> None:
    pass


EXPECTED = "expected [delta (6 float32)]"
BAD_REPLIES: dict[str, tuple[Callable[[pb.SiteMessage], None], Any, str]] = {
    # name: (edit of the reply header, chunk values (or index, values), failure reason)
    "nan": (_keep, np.array([1, 1, np.nan, 1, 1, 1], np.float32), "array holds NaN or infinite"),
    "inf": (_keep, np.array([1, 1, 1, 1, 1, -np.inf], np.float32), "array holds NaN or infinite"),
    "short": (_keep, np.ones(5, np.float32), "all 1 chunks arrived with 20 of 24 bytes"),
    "long": (_keep, np.ones(7, np.float32), "chunks carry more than the announced 24 bytes"),
    "chunk_out_of_order": (_keep, (1, np.ones(6, np.float32)), "chunk 1 arrived, expected chunk 0"),
    "too_few_chunks": (_chunk_count(0), None, "0 chunks cannot carry 24 bytes"),
    "wrong_length": (
        _set_arrays(_array(length=5)),
        None,
        f"fit reply announces arrays [delta (5 float32)]; {EXPECTED}",
    ),
    "wrong_dtype": (
        _set_arrays(_array(dtype=pb.DTYPE_FLOAT64)),
        None,
        f"fit reply announces arrays [delta (6 float64)]; {EXPECTED}",
    ),
    "unknown_dtype": (_set_arrays(_array(dtype=99)), None, "unknown array dtype code 99"),
    "huge": (
        _set_arrays(_array(length=2**60)),
        None,
        f"fit reply announces arrays [delta ({2**60} float32)]; {EXPECTED}",
    ),
    "wrong_array_name": (
        _set_arrays(_array(name="weights")),
        None,
        f"fit reply announces arrays [weights (6 float32)]; {EXPECTED}",
    ),
    "extra_array": (
        _set_arrays(_array(), _array(name="more", length=1)),
        None,
        f"fit reply announces arrays [delta (6 float32), more (1 float32)]; {EXPECTED}",
    ),
    "no_array": (_set_arrays(), None, f"fit reply announces arrays []; {EXPECTED}"),
    "duplicate_array": (_set_arrays(_array(), _array()), None, "field 'delta' appears twice"),
    "too_many_arrays": (_many_arrays, None, "65 arrays and 2 scalars exceed the limits"),
    "too_many_scalars": (_many_scalars, None, "1 arrays and 1026 scalars exceed the limits"),
    "long_name": (
        _set_scalar("metrics[" + "m" * 300 + "]", pb.Scalar(number=1.0)),
        None,
        "field name of 309 characters is not allowed",
    ),
    "long_text": (
        _set_scalar("note", pb.Scalar(text="x" * 5000)),
        None,
        "note: text of 5000 characters is too long",
    ),
    "empty_scalar": (_set_scalar("num_examples", pb.Scalar()), None, "num_examples: empty value"),
    "nan_metric": (
        _set_scalar("metrics[loss]", pb.Scalar(number=float("nan"))),
        None,
        "metrics[loss] is not finite",
    ),
    "nan_scalar": (
        _set_scalar("clip_bit", pb.Scalar(number=float("inf"))),
        None,
        "clip_bit is not finite",
    ),
    "wrong_type": (
        _set_scalar("num_examples", pb.Scalar(text="3")),
        None,
        "num_examples must be int, got str",
    ),
    "flag_for_int": (
        _set_scalar("num_examples", pb.Scalar(flag=True)),
        None,
        "num_examples must be int, got a flag",
    ),
    "missing_field": (_drop_scalar("num_examples"), None, "num_examples is missing"),
    "unknown_field": (
        _set_scalar("bogus", pb.Scalar(integer=1)),
        None,
        "fit message has unknown fields: 'bogus'",
    ),
    "forged_sender": (
        _set_scalar("site", pb.Scalar(text="site-a")),
        None,
        "fit message has unknown fields: 'site'",
    ),
    "forged_round": (
        _set_scalar("round", pb.Scalar(integer=2)),
        None,
        "fit message has unknown fields: 'round'",
    ),
    "wrong_kind": (
        _binding(kind="evaluate"),
        None,
        "binding says round 1 'evaluate', request was round 1 fit",
    ),
    "unknown_kind": (
        _binding(kind="bogus"),
        None,
        "binding says round 1 'bogus', request was round 1 fit",
    ),
    "wrong_round": (_binding(round=9), None, "binding says round 9 'fit', request was round 1 fit"),
    "no_body": (_no_body, None, "a reply with no body does not answer round 1 fit"),
    "site_error": (_error, None, None),
}


@pytest.mark.parametrize("name", list(BAD_REPLIES))
def test_bad_reply_fails_that_request_with_its_reason(
    fleet: GrpcFleet, raw: RawSite, name: str
) -> None:
    edit, values, reason = BAD_REPLIES[name]
    outcomes, req = _fit_round(fleet, raw, 1)
    rid = req.binding.request_id
    m = _reply(req)
    edit(m)
    raw.send(m)
    index, values = values if isinstance(values, tuple) else (0, values)
    if name != "site_error":  # the update's bytes follow whatever was announced; after a
        # refused header they are dropped without a word (the request is already closed)
        raw.send(_chunk(rid, np.ones(6, np.float32) if values is None else values, index))
    (out,) = list(outcomes)
    assert isinstance(out, Failure)
    want = "site reported: I refuse" if reason is None else f"invalid reply: {reason}"
    assert out.reason.startswith(want), out.reason
    # An invalid reply is logged and counted once, naming the request; a site's own error
    # report is an answer, not a refusal.
    logged = (
        [] if reason is None else [f"round 1 fit: {out.reason.removeprefix('invalid reply: ')}"]
    )
    assert _wait_refusals(fleet, len(logged)) == logged
    assert fleet.sites() == ["hostile"]  # still connected: one bad reply fails one request
    # ... and the same connection answers the next round normally.
    outcomes2, req2 = _fit_round(fleet, raw, 2)
    raw.send(_reply(req2))
    raw.send(_chunk(req2.binding.request_id, np.full(6, 4, np.float32)))
    (ok,) = list(outcomes2)
    assert isinstance(ok, Reply) and ok.message.round == 2, ok


def test_a_new_reply_before_the_arrays_of_the_last_one_fails_the_unfinished_one(
    fleet: GrpcFleet, raw: RawSite
) -> None:
    outcomes, req = _fit_round(fleet, raw, 1)
    raw.send(_reply(req))
    raw.send(_reply(req))  # again, before a byte of the first one's update
    (out,) = list(outcomes)
    assert out == Failure(
        "hostile", "invalid reply: a new reply started before its arrays were complete"
    )
    assert _wait_refusals(fleet, 2)[1] == (
        f"second reply for round 1 'fit' (request {req.binding.request_id}) refused"
    )


def _answer_in_background(raw: RawSite, edit: Callable[[pb.Payload], None]) -> threading.Thread:
    def body() -> None:
        req = raw.recv("request").request
        m = _reply(req)
        edit(m.reply.payload)
        raw.send(m)
        raw.send(_chunk(req.binding.request_id, np.ones(6, np.float32)))

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def _metrics(n: int, name: str = "m") -> Callable[[pb.Payload], None]:
    def edit(p: pb.Payload) -> None:
        for i in range(n):
            p.scalars[f"metrics[{name}{i}]"].number = 0.0

    return edit


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda p: p.scalars["num_examples"].CopyFrom(pb.Scalar(integer=2**60)),
            f"num_examples must be a non-negative int, got {2**60}",
        ),
        (
            lambda p: p.scalars["num_examples"].CopyFrom(pb.Scalar(integer=-1)),
            "num_examples must be a non-negative int, got -1",
        ),
        (_metrics(256), "257 metrics exceed the limit of 256"),
        (_metrics(1, "x" * 129), "metric name 'xxxxxxxx"),
        (
            lambda p: p.scalars["clip_bit"].CopyFrom(pb.Scalar(number=0.25)),
            "clip bit must be -0.5 or 0.5, got 0.25",
        ),
    ],
    ids=["huge-count", "negative-count", "too-many-metrics", "long-metric-name", "clip-bit"],
)
def test_a_reply_the_wire_carries_but_its_kind_forbids_is_refused_by_the_phase(
    fleet: GrpcFleet, raw: RawSite, edit: Callable[[pb.Payload], None], reason: str
) -> None:
    """Well-formed on the wire, so the fleet hands it over; the phase runner's check_reply
    refuses it before any aggregate sees it, and the phase records why."""
    t = _answer_in_background(raw, edit)
    accepted: list[str] = []
    phase = Phase("fit", 1, [("hostile", FitIns(1, W, TrainSettings(), 0))], 3, min_replies=0)
    record = run_phase(fleet, phase, lambda site, msg: accepted.append(site))
    t.join(3)
    assert accepted == [] and record.accepted == []
    (failure,) = record.failures
    assert failure.site == "hostile"
    assert failure.reason.startswith(f"reply refused: {reason}"), failure.reason


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
    raw.send(pb.SiteMessage(hello=pb.Hello(site_name="site-a", protocol_version=V)))
    raw.send(pb.SiteMessage())
    raw.send(_reply(req2))
    raw.send(_chunk(req2.binding.request_id, np.full(6, 5, np.float32)))
    raw.send(_reply(req2))  # a second submission for a request already answered
    (second,) = list(outcomes2)
    assert isinstance(second, Reply) and second.message.round == 2
    np.testing.assert_array_equal(second.message.delta, np.full(6, 5, np.float32))
    reasons = _wait_refusals(fleet, 7)
    assert reasons == [
        f"second reply for round 1 'fit' (request {req1.binding.request_id}) refused",
        "reply for job 'other-job', this server runs 'job-1'",
        "reply for round 2 'fit' matches no open request (10000)",
        "chunk for request 777 that is not arriving",
        "unexpected hello message after hello",
        "unexpected empty message after hello",
        f"second reply for round 2 'fit' (request {req2.binding.request_id}) refused",
    ]
    assert "refused from hostile: second reply for round 1 'fit'" in caplog.text


def test_reply_after_the_deadline_and_stale_round_are_refused(
    fleet: GrpcFleet, raw: RawSite
) -> None:
    outcomes = fleet.send([("hostile", FitIns(1, W, TrainSettings(), 0))], Timing(0.3))
    req1 = raw.recv("request").request
    (out,) = list(outcomes)
    assert out == Failure("hostile", "no reply within the 0.3 s deadline")
    assert raw.recv("cancel").cancel.request_id == req1.binding.request_id
    raw.send(_reply(req1))
    stale = _reply(req1, request_id=5_000, round=0)
    raw.send(stale)
    assert _wait_refusals(fleet, 2) == [
        "reply for round 1 'fit' arrived after its deadline; refused",
        "stale reply for round 0 'fit'; the federation is at round 1",
    ]


def _refused_first(fleet: GrpcFleet, pki: Path, first: pb.SiteMessage) -> str:
    """Open a stream whose first message is ``first``; the details of its refusal."""
    r = RawSite(fleet, pki / "sites" / "hostile", hello=False)
    r.send(first)
    r._reader.join(3)
    r.close()
    assert r.error is not None and r.error.code() == grpc.StatusCode.PERMISSION_DENIED
    return r.error.details() or ""


def test_first_message_must_be_hello(fleet: GrpcFleet, pki: Path) -> None:
    first = pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=1))
    assert "first message must be hello" in _refused_first(fleet, pki, first)


def test_a_site_speaking_protocol_1_is_refused(fleet: GrpcFleet, pki: Path) -> None:
    first = pb.SiteMessage(hello=pb.Hello(protocol_version=1))
    assert _refused_first(fleet, pki, first) == f"protocol version 1, server speaks {V}"
    assert fleet.sites() == []


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


HELLO = pb.SiteMessage(hello=pb.Hello(protocol_version=V)).SerializeToString()


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
    (out,) = fleet.send([("site-a", EvaluateIns(1, W))], Timing(5))
    assert isinstance(out, Reply)  # the server kept serving the honest site
    assert fleet._sessions["site-a"] is honest


# ---- a custom kind: no exact arrays declared, so a reply is held to a byte budget -------


def _probe_session(fleet: GrpcFleet) -> tuple[Session, Pending]:
    session = Session(fleet, "s", chunk_bytes=1024)
    small = ProbeIns(2, np.zeros(4, np.uint8), np.zeros(2), "l", 1, False, 1.0)
    p = Pending(3, "s", small, kind_of(small))
    session.submit(p)
    return session, p


def _probe_reply(arrays: list[pb.ArrayInfo]) -> pb.SiteMessage:
    scalars = {
        "label": pb.Scalar(text="L"),
        "count": pb.Scalar(integer=2),
        "strict": pb.Scalar(flag=True),
    }
    b = pb.Binding(job_id="job-1", round=2, request_id=3, kind="grpc_probe")
    return pb.SiteMessage(
        reply=pb.Reply(binding=b, payload=pb.Payload(arrays=arrays, scalars=scalars))
    )


# Two empty arrays (one empty chunk each) make a minimal well-formed probe reply.
_PROBE_ARRAYS = [
    pb.ArrayInfo(name="image", length=0, dtype=pb.DTYPE_UINT8, num_chunks=1),
    pb.ArrayInfo(name="scores", length=0, dtype=pb.DTYPE_FLOAT64, num_chunks=1),
]
_PROBE_CHUNKS = [pb.SiteMessage(chunk=pb.Chunk(request_id=3, index=i)) for i in (0, 1)]


def test_a_custom_kinds_reply_is_held_to_its_byte_budget(bare_fleet: GrpcFleet) -> None:
    assert REPLY_BYTES_FLOOR == 2**20  # the budget for a request of a few bytes
    over = [
        pb.ArrayInfo(name="image", length=2**20, dtype=pb.DTYPE_UINT8, num_chunks=1024),
        pb.ArrayInfo(name="scores", length=1, dtype=pb.DTYPE_FLOAT64, num_chunks=1),
    ]
    session, p = _probe_session(bare_fleet)
    session.on_message(_probe_reply(over))
    assert p.outcome == Failure(
        "s",
        "invalid reply: grpc_probe message announces 1048584 bytes of arrays, over the limit "
        "of 1048576",
    )
    session.close("done")
    # Within the budget, two arrays of two dtypes arrive chunk by chunk with one index.
    session, p = _probe_session(bare_fleet)
    ok = [
        pb.ArrayInfo(name="image", length=1500, dtype=pb.DTYPE_UINT8, num_chunks=2),
        pb.ArrayInfo(name="scores", length=2, dtype=pb.DTYPE_FLOAT64, num_chunks=1),
    ]
    session.on_message(_probe_reply(ok))
    image, scores = np.arange(1500).astype(np.uint8), np.array([0.5, -1.0])
    for frame in codec.iter_payload_frames([image, scores], 3, 1024):
        session.on_message(pb.SiteMessage.FromString(frame))
    assert isinstance(p.outcome, Reply) and isinstance(p.outcome.message, ProbeRes)
    res = p.outcome.message
    assert (res.site, res.round, res.label, res.count, res.strict, res.tags) == (
        "s",
        2,
        "L",
        2,
        True,
        {},
    )
    np.testing.assert_array_equal(res.image, image)
    np.testing.assert_array_equal(res.scores, scores)
    session.close("done")


def test_a_custom_kinds_reply_is_still_checked_field_by_field(bare_fleet: GrpcFleet) -> None:
    session, p = _probe_session(bare_fleet)
    m = _probe_reply(_PROBE_ARRAYS)
    m.reply.payload.scalars["count"].CopyFrom(pb.Scalar(number=2.0))
    for msg in (m, *_PROBE_CHUNKS):
        session.on_message(msg)
    assert p.outcome == Failure("s", "invalid reply: count must be int, got float")
    session.close("done")


# ---- property: no sequence of messages can break a session ------------------------------

_ids = st.sampled_from([1, 2, 3, 99])
# The property test below opens request 1 (fit), 2 (evaluate) and 3 (grpc_probe), all in
# round 2. Half the bindings and payloads start from a right answer and change a little,
# so that sequences get past the binding checks and reach every check behind them.
_RIGHT = {
    1: pb.Binding(job_id="job-1", round=2, kind="fit", request_id=1),
    2: pb.Binding(job_id="job-1", round=2, kind="evaluate", request_id=2),
    3: pb.Binding(job_id="job-1", round=2, kind="grpc_probe", request_id=3),
}
_bindings = st.one_of(
    st.sampled_from(list(_RIGHT.values())),
    st.builds(
        pb.Binding,
        job_id=st.sampled_from(["job-1", "other", ""]),
        round=st.integers(0, 4),
        kind=st.sampled_from(["fit", "evaluate", "grpc_probe", "bogus", ""]),
        request_id=_ids,
    ),
)
_arrays = st.builds(
    pb.ArrayInfo,
    name=st.sampled_from(["delta", "image", "scores", "", "x" * 300]),
    length=st.sampled_from([0, 5, 6, 7, 2**40]),
    dtype=st.integers(0, 8),
    num_chunks=st.integers(0, 3),
)
_scalar_values = st.one_of(
    st.sampled_from([0.0, 1.5, -0.5, float("nan"), float("inf")]).map(
        lambda v: pb.Scalar(number=v)
    ),
    st.sampled_from([0, 3, -1, 2**60]).map(lambda v: pb.Scalar(integer=v)),
    st.sampled_from(["", "L", "x" * 5000]).map(lambda v: pb.Scalar(text=v)),
    st.booleans().map(lambda v: pb.Scalar(flag=v)),
    st.just(pb.Scalar()),
)
_scalar_names = st.sampled_from(
    [
        "num_examples",
        "metrics[loss]",
        "metrics[]",
        "clip_bit",
        "label",
        "count",
        "strict",
        "site",
        "round",
        "tags[k]",
        "",
        "y" * 300,
    ]
)
_EVAL_PAYLOAD = pb.Payload(
    scalars={"num_examples": pb.Scalar(integer=2), "metrics[acc]": pb.Scalar(number=1.0)}
)
_GOOD_PAYLOADS = [
    _fit_payload(num_examples=4),
    _EVAL_PAYLOAD,
    _probe_reply(_PROBE_ARRAYS).reply.payload,
]


def _mutated(
    base: pb.Payload, arrays: list[pb.ArrayInfo] | None, scalars: dict[str, pb.Scalar]
) -> pb.Payload:
    out = pb.Payload()
    out.CopyFrom(base)
    if arrays is not None:
        del out.arrays[:]
        out.arrays.extend(arrays)
    for k, v in scalars.items():
        out.scalars[k].CopyFrom(v)
    return out


_payloads = st.one_of(
    st.builds(
        lambda arrays, scalars: pb.Payload(arrays=arrays, scalars=scalars),
        st.lists(_arrays, max_size=3),
        st.dictionaries(_scalar_names, _scalar_values, max_size=5),
    ),
    st.builds(
        _mutated,
        st.sampled_from(_GOOD_PAYLOADS),
        st.none() | st.lists(_arrays, max_size=2),
        st.dictionaries(_scalar_names, _scalar_values, max_size=2),
    ),
)
_replies = st.builds(
    lambda b, body, payload, reason: pb.Reply(
        binding=b,
        **{
            "payload": {"payload": payload},
            "error": {"error": pb.SiteError(reason=reason)},
            "none": {},
        }[body],
    ),
    _bindings,
    st.sampled_from(["payload", "payload", "error", "none"]),
    _payloads,
    st.text(max_size=5),
)
_chunks = st.builds(
    pb.Chunk,
    request_id=_ids,
    index=st.integers(0, 2),
    data=st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [
                np.ones(6, np.float32).tobytes(),
                np.ones(3, np.float32).tobytes(),
                np.full(6, np.nan, np.float32).tobytes(),
                b"",
            ]
        ),
    ),
)
# Well-formed answers to the open requests, mixed in so that sequences also reach the
# accept paths (and their interplay with junk).
_GOOD_FIT = pb.SiteMessage(reply=pb.Reply(binding=_RIGHT[1], payload=_GOOD_PAYLOADS[0]))
_GOOD_CHUNK = pb.SiteMessage(
    chunk=pb.Chunk(request_id=1, index=0, data=np.ones(6, np.float32).tobytes())
)
_GOOD_EVAL = pb.SiteMessage(reply=pb.Reply(binding=_RIGHT[2], payload=_EVAL_PAYLOAD))
_GOOD_PROBE = _probe_reply(_PROBE_ARRAYS)
_messages = st.one_of(
    st.sampled_from([_GOOD_FIT, _GOOD_CHUNK, _GOOD_EVAL, _GOOD_PROBE, *_PROBE_CHUNKS]),
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


def _sent_scalars(msgs: list[pb.SiteMessage], rid: int, kind: str) -> list[dict[str, Any]]:
    """The scalars of every reply payload the sequence sent for request ``rid``."""
    return [
        {k: getattr(v, v.WhichOneof("value")) for k, v in m.reply.payload.scalars.items()}
        for m in msgs
        if m.WhichOneof("kind") == "reply"
        and m.reply.WhichOneof("body") == "payload"
        and m.reply.binding.request_id == rid
        and m.reply.binding.kind == kind
        and all(v.WhichOneof("value") for v in m.reply.payload.scalars.values())
    ]


def _sent_bytes(msgs: list[pb.SiteMessage], rid: int) -> bytes:
    return b"".join(
        m.chunk.data for m in msgs if m.WhichOneof("kind") == "chunk" and m.chunk.request_id == rid
    )


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
    request ends at most once, and every accepted reply is one the site really sent, of
    its request's kind, whole, finite, and either passes its kind's checks or is refused
    by them."""
    session = Session(bare_fleet, "s", chunk_bytes=1024)
    fit_ins = FitIns(2, W, TrainSettings(), 0)
    ev_ins = EvaluateIns(2, W)
    probe_ins = ProbeIns(2, np.zeros(4, np.uint8), np.zeros(2), "l", 1, False, 1.0)
    pending = [
        Pending(1, "s", fit_ins, kind_of(fit_ins)),
        Pending(2, "s", ev_ins, kind_of(ev_ins)),
        Pending(3, "s", probe_ins, kind_of(probe_ins)),
    ]
    for p in pending:
        session.submit(p)
    for m in msgs:
        session.on_message(codec.decode_site_message(m.SerializeToString()))
    for p in pending:
        out = p.outcome
        if not isinstance(out, Reply):
            assert out is None or isinstance(out, Failure)
            continue
        res = out.message
        assert type(res) is p.kind.reply
        assert res.site == "s" and res.round == 2
        sent = encode(res).scalars
        # seeded_noise may be left out on the wire: absent means False, which encode() writes
        fill = {"seeded_noise": False} if "seeded_noise" in sent else {}
        assert sent in [{**fill, **c} for c in _sent_scalars(msgs, p.request_id, p.kind.name)]
        for v in sent.values():
            assert not isinstance(v, float) or np.isfinite(v)
        for a in encode(res).arrays.values():
            assert a.dtype.kind != "f" or np.isfinite(a).all()
            assert a.tobytes() in _sent_bytes(msgs, p.request_id)
        if isinstance(res, FitRes):
            assert res.delta.dtype == np.float32 and res.delta.shape == (6,)
        try:
            check_reply(res, p.message, "s")
        except InvalidMessageError:
            continue
        if isinstance(res, (FitRes, EvaluateRes)):
            assert 0 <= res.num_examples <= MAX_EXAMPLES
    session.close("end of example")
    assert all(p.done.is_set() for p in pending)


def test_good_answers_are_accepted_between_junk_messages(bare_fleet: GrpcFleet) -> None:
    """The accept paths the property test can reach, checked deterministically."""
    session = Session(bare_fleet, "s", chunk_bytes=1024)
    fit_ins, ev_ins = FitIns(2, W, TrainSettings(), 0), EvaluateIns(2, W)
    probe_ins = ProbeIns(2, np.zeros(4, np.uint8), np.zeros(2), "l", 1, False, 1.0)
    fit = Pending(1, "s", fit_ins, kind_of(fit_ins))
    ev = Pending(2, "s", ev_ins, kind_of(ev_ins))
    pr = Pending(3, "s", probe_ins, kind_of(probe_ins))
    for p in (fit, ev, pr):
        session.submit(p)
    junk = pb.SiteMessage(chunk=pb.Chunk(request_id=99, data=b"x"))
    beat = pb.SiteMessage(heartbeat=pb.Heartbeat())
    for m in (_GOOD_FIT, junk, beat, _GOOD_CHUNK, _GOOD_EVAL, _GOOD_PROBE, *_PROBE_CHUNKS):
        session.on_message(m)
    assert isinstance(fit.outcome, Reply) and isinstance(ev.outcome, Reply)
    np.testing.assert_array_equal(fit.outcome.message.delta, np.ones(6, np.float32))
    assert fit.outcome.message.metrics == {"loss": 0.5}
    assert ev.outcome.message == EvaluateRes("s", 2, 2, {"acc": 1.0})
    assert isinstance(pr.outcome, Reply) and pr.outcome.message.label == "L"
    assert bare_fleet.refusals[-1] == ("s", "chunk for request 99 that is not arriving")
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
    (out,) = fleet.send([("site-a", FitIns(7, w, TrainSettings(), 0))], Timing(5))
    assert isinstance(out, Reply) and out.message.round == 7
    np.testing.assert_array_equal(out.message.delta, np.ones(3000, np.float32))
    stop.set()
    t.join(5)
    fleet.close()


def test_a_site_that_stops_reading_is_cut_off_and_pins_no_model(pki: Path) -> None:
    """It keeps its heartbeats coming, so it never looks dead; but the server's send to
    it stalls. The session is closed once a request has waited ``stalled_send_s`` to go
    out, the request fails at once, and expired requests drop their arrays."""
    fleet = GrpcFleet(
        "127.0.0.1:0", job_id="job-1", pki_dir=pki, heartbeat_s=0.5, stalled_send_s=1.0
    )
    out: queue.Queue[pb.SiteMessage | None] = queue.Queue()
    channel = grpc.secure_channel(fleet.address, site_credentials(pki / "sites" / "hostile"))
    try:
        method = connect_method(
            channel, pb.SiteMessage.SerializeToString, pb.ServerMessage.FromString
        )
        call = method(iter(out.get, None))
        out.put(pb.SiteMessage(hello=pb.Hello(protocol_version=V, max_chunk_bytes=2**20)))
        assert next(call).WhichOneof("kind") == "welcome"  # and never reads again
        stop = threading.Event()

        def beat() -> None:
            n = 0
            while not stop.wait(0.2):
                n += 1
                out.put(pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=n)))

        threading.Thread(target=beat, daemon=True).start()
        fleet.wait_for_sites(1, timeout=5)
        big = np.zeros(8 * 2**20, np.float32)  # 32 MiB: more than any flow-control window
        t0 = time.monotonic()
        (outcome,) = fleet.send([("hostile", FitIns(1, big, TrainSettings(), 0))], Timing(60))
        assert isinstance(outcome, Failure) and "not reading" in outcome.reason
        assert time.monotonic() - t0 < 15
        assert fleet.sites() == []
        stop.set()
    finally:
        out.put(None)
        channel.close()
        fleet.close()


def test_an_expired_request_lets_go_of_its_model(pki: Path) -> None:
    fleet = GrpcFleet("127.0.0.1:0", job_id="job-1", pki_dir=pki, heartbeat_s=0.5)
    try:
        session = Session(fleet, "hostile", 2**20)
        fit = FitIns(1, np.zeros(2**20, np.float32), TrainSettings(), 0)
        p = Pending(1, "hostile", fit, kind_of(fit))
        session.submit(p)
        assert p.arrays and p.request is not None
        p.resolve(Failure("hostile", "missed the deadline"))
        session.expire(p, "missed the deadline")
        assert p.arrays == [] and p.request is None
    finally:
        fleet.close()
