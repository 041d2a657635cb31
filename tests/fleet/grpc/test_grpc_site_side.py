"""The site's side of the wire: what a site accepts from the server, checked like the
server checks sites (a compromised or misconfigured server is refused, not obeyed)."""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import pytest
from grpc_site_helpers import ProbeIns, make_site, probe

from consortia.core.messages import (
    ClientPrivacy,
    EvaluateIns,
    FitIns,
    InvalidMessageError,
    TrainSettings,
    decode,
    encode,
)
from consortia.fleet.grpc import JobEnded, codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.client import _Connection, _Receiver

MAX_MODEL_BYTES = 64 * 1024


class _Site:
    def __init__(self) -> None:
        self.conn = _Connection(make_site("site-a"), threading.Event(), 1024, 1.0)
        self.conn.job_id = "job-1"
        self.work: queue.Queue[Any] = queue.Queue()
        self.receiver = _Receiver(self.conn, self.work, MAX_MODEL_BYTES)
        self.rid = 0

    def request(self, message: Any, **binding: Any) -> list[bytes]:
        """Send ``message`` as the server would; return its chunk frames (not yet sent)."""
        self.rid += 1
        payload = encode(message)
        body, arrays = codec.payload_to_pb(payload, 1024)
        b = pb.Binding(job_id="job-1", round=payload.round, request_id=self.rid, kind=payload.kind)
        for k, v in binding.items():
            setattr(b, k, v)
        self.receiver.on_message(pb.ServerMessage(request=pb.Request(binding=b, payload=body)))
        return list(codec.iter_payload_frames(arrays, self.rid, 1024))

    def deliver(self, frames: list[bytes]) -> None:
        for f in frames:
            self.receiver.on_message(pb.ServerMessage.FromString(f))

    def refusals(self) -> list[str]:
        out = []
        while not self.conn.out.empty():
            reply, arrays = self.conn.out.get_nowait()
            assert reply.WhichOneof("body") == "error" and arrays == []
            out.append(reply.error.reason)
        return out


def test_a_well_formed_request_of_any_registered_kind_becomes_work() -> None:
    site = _Site()
    w = np.arange(600, dtype=np.float32)  # 2400 bytes: 3 chunks
    site.deliver(site.request(FitIns(3, w, TrainSettings(lr=0.5), 9)))
    site.deliver(site.request(probe(4)))
    fit, pr = site.work.get_nowait().message, site.work.get_nowait().message
    assert isinstance(fit, FitIns) and (fit.round, fit.seed, fit.settings.lr) == (3, 9, 0.5)
    np.testing.assert_array_equal(fit.weights, w)
    assert isinstance(pr, ProbeIns) and pr.label == probe().label and pr.round == 4
    assert site.refusals() == []


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (
            lambda s: s.request(EvaluateIns(1, np.ones(2, np.float32)), kind="bogus"),
            "unknown message kind 'bogus'",
        ),
        (
            lambda s: s.request(EvaluateIns(1, np.ones(2, np.float32)), job_id="other"),
            "request for job 'other', connected to 'job-1'",
        ),
        (
            lambda s: s.request(EvaluateIns(1, np.ones(16_385, np.float32))),
            "evaluate message announces 65540 bytes of arrays, over the limit of 65536",
        ),
        (
            lambda s: s.deliver(
                s.request(EvaluateIns(1, np.ones(2, np.float32)), kind="fit")  # wrong body
            ),
            "settings is missing",
        ),
        (
            lambda s: s.deliver(s.request(EvaluateIns(1, np.array([1.0, np.nan])))),
            "array holds NaN or infinite values",
        ),
        (
            lambda s: s.deliver(s.request(EvaluateIns(1, np.ones(600, np.float32)))[1:]),
            "chunk 1 arrived, expected chunk 0",
        ),
    ],
    ids=["unknown-kind", "other-job", "too-big", "wrong-body", "nan", "out-of-order"],
)
def test_a_bad_request_is_answered_with_an_error_naming_why(send: Any, reason: str) -> None:
    site = _Site()
    send(site)
    assert site.refusals() == [f"site refused the request: {reason}"]
    assert site.work.empty()
    # ... and the next good request is served as if nothing had happened.
    site.deliver(site.request(EvaluateIns(2, np.ones(2, np.float32))))
    assert site.work.get_nowait().message.round == 2


def test_an_unfinished_request_is_refused_when_the_next_one_starts_and_cancel_drops_it() -> None:
    site = _Site()
    first = site.request(EvaluateIns(1, np.ones(600, np.float32)))
    site.deliver(first[:1])
    site.deliver(site.request(EvaluateIns(2, np.ones(2, np.float32))))
    assert site.refusals() == [
        "site refused the request: a new request arrived before its arrays were complete"
    ]
    assert site.work.get_nowait().message.round == 2
    third = site.request(EvaluateIns(3, np.ones(600, np.float32)))
    site.deliver(third[:1])
    site.receiver.on_message(pb.ServerMessage(cancel=pb.Cancel(request_id=site.rid)))
    site.deliver(third[1:])  # the rest of a withdrawn request is ignored
    assert site.work.empty() and site.refusals() == []
    assert site.rid in site.conn.cancelled


def test_job_end_is_remembered_for_run_site_to_return() -> None:
    site = _Site()
    site.receiver.on_message(pb.ServerMessage(job_end=pb.JobEnd(job_id="job-1", status="failed")))
    assert site.conn.job_end == JobEnded("job-1", "failed")


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"privacy.mode": "trusted"}, "unknown privacy mode 'trusted'"),
        ({"privacy.clip_norm": -1.0}, "clip_norm must be >= 0"),
        ({"privacy.bits": 63}, "bits 63 must be in 0..62"),
        ({"seed": -5}, "seed must be non-negative"),
        ({"settings.lr": -0.1}, "lr must be >= 0"),
    ],
)
def test_a_site_refuses_instructions_it_must_not_act_on(change, reason) -> None:
    """A deployed site checks the server's fit instructions before it trains on them."""
    w = np.zeros(3, np.float32)
    privacy = ClientPrivacy("central", 1.0, 1.1, 0.1, 1e-5)
    payload = encode(FitIns(2, w, TrainSettings(), 7, privacy))
    payload.scalars.update(change)
    with pytest.raises(InvalidMessageError, match=reason):
        decode(payload, reply=False)
    assert decode(encode(FitIns(2, w, TrainSettings(), 7, privacy)), reply=False).seed == 7
