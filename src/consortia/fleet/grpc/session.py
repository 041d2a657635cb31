"""One connected site on the server: its outgoing queue, its open requests, its replies.

A ``Session`` lives as long as the site's stream. Two threads touch it: gRPC's handler
thread drains ``outgoing()`` (requests cut into chunks lazily, heartbeats when idle) and a
reader thread feeds every incoming message to ``on_message``, which validates it and
resolves the matching ``Pending``. Anything that does not belong is refused with a logged
reason and changes nothing; when the stream ends, every open request becomes a Failure.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from consortia.core.manifest import printable
from consortia.core.messages import InvalidMessageError, MessageKind, decode, encode
from consortia.core.spec import vouch_finite
from consortia.fleet.base import Failure, Outcome, Reply
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.buffers import BufferPool


class SessionHost(Protocol):
    """What a session needs of the fleet that holds it (the gRPC fleet)."""

    job_id: str
    chunk_bytes: int
    heartbeat_s: float
    dead_after_s: float
    stalled_send_s: float
    buffers: BufferPool

    def refuse(self, site: str, reason: str) -> None: ...

    def record_closed(self, request_id: int, how: str) -> None: ...

    def explain_unknown(self, b: pb.Binding) -> str: ...

    def is_revoked(self, serial: int) -> bool: ...

    def session_closed(self, session: Session, reason: str) -> None: ...

    def site_refused_job(self, site: str, reason: str) -> None: ...


# A reply's arrays may be at most this many times the request's, when its kind does not
# name them exactly (registered kinds with ``reply_arrays`` are held to exact sizes).
REPLY_BYTES_FACTOR = 2
REPLY_BYTES_FLOOR = 1 << 20


@dataclass
class Pending:
    """One request in flight; resolved exactly once (reply, failure or expiry)."""

    request_id: int
    site: str
    message: Any
    kind: MessageKind
    request: pb.Request | None = None
    arrays: list[np.ndarray] = field(default_factory=list)
    request_bytes: int = 0
    session: Session | None = None
    on_done: Callable[[Outcome], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, outcome: Outcome) -> bool:
        with self._lock:
            if self.done.is_set():
                return False
            self.outcome = outcome
            self.done.set()
        if self.on_done is not None:
            self.on_done(outcome)
        return True

    @property
    def label(self) -> str:
        return f"round {self.message.round} {self.kind.name}"

    def reply_limits(self) -> tuple[dict[str, tuple[int, np.dtype]] | None, int]:
        """What a reply may announce: exact arrays, or a byte budget."""
        exact = self.kind.reply_arrays(self.message) if self.kind.reply_arrays else None
        return exact, max(REPLY_BYTES_FLOOR, REPLY_BYTES_FACTOR * self.request_bytes)


_CLOSE = object()


class Session:
    def __init__(
        self, fleet: SessionHost, site: str, chunk_bytes: int, serial: int | None = None
    ) -> None:
        self.fleet = fleet
        self.site = site
        self.serial = serial  # of the site's certificate; None when insecure
        self.chunk_bytes = chunk_bytes
        self.closed = threading.Event()
        self.last_seen = time.monotonic()
        self._out: queue.Queue[object] = queue.Queue()
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        # The reply whose arrays are arriving.
        self._assembly: tuple[Pending, codec.PayloadAssembler] | None = None
        self._skip: int | None = None  # chunks of a refused reply are dropped silently
        self.cancel_rpc: Callable[[], object] | None = None  # unblocks a stuck send on close
        self.send_started: float | None = None  # when the request being sent was handed over

    # ---- server -> site ------------------------------------------------------------------

    def submit(self, p: Pending) -> None:
        """Queue a request; built here so an unsendable message fails the caller at once."""
        payload = encode(p.message)
        body, p.arrays = codec.payload_to_pb(payload, self.chunk_bytes)
        p.request_bytes = payload.nbytes
        binding = pb.Binding(
            job_id=self.fleet.job_id,
            round=payload.round,
            request_id=p.request_id,
            kind=payload.kind,
        )
        p.request = pb.Request(binding=binding, payload=body)
        p.session = self
        with self._lock:
            if self.closed.is_set():
                p.resolve(Failure(self.site, "disconnected before the request was sent"))
                return
            self._pending[p.request_id] = p
        self._out.put(p)

    def await_reply(self, p: Pending) -> None:
        """Expect a reply to a request that reached the site another way: the Welcome's
        join (``codec.WELCOME_REQUEST_ID``). The reply is checked like any other; the
        request has no deadline and ends, unanswered, with the session."""
        p.session = self
        with self._lock:
            if not self.closed.is_set():
                self._pending[p.request_id] = p

    def end_job(self, job_id: str, status: str) -> None:
        """Tell the site the job is over; it goes out after anything already queued."""
        if not self.closed.is_set():
            self._out.put(pb.ServerMessage(job_end=pb.JobEnd(job_id=job_id, status=status)))

    def expire(self, p: Pending, reason: str) -> None:
        """The deadline passed: forget the request and tell the site to drop it. The
        request may still wait in the send queue behind a site that stopped reading; it
        lets go of its arrays now, so that the queue never pins old models."""
        with self._lock:
            self._pending.pop(p.request_id, None)
        p.arrays, p.request = [], None
        self.fleet.record_closed(p.request_id, "expired")
        if not self.closed.is_set():
            self._out.put(
                pb.ServerMessage(cancel=pb.Cancel(request_id=p.request_id, reason=reason))
            )

    def outgoing(self, welcome: pb.Welcome) -> Iterator[pb.ServerMessage | bytes]:
        """What gRPC sends down the stream; pulled one message at a time (backpressure)."""
        yield pb.ServerMessage(welcome=welcome)
        beat = 0
        # Runs until the _CLOSE marker that close() queues, not until ``closed`` is set:
        # what was queued before the close must still go out. ``end_job(); close()`` is
        # how a job ends, and stopping at the flag dropped the JobEnd every time, so sites
        # never heard that the job was over and kept reconnecting. Requests still queued
        # were resolved by close() and are skipped below, so only control messages remain.
        while True:
            try:
                item = self._out.get(timeout=self.fleet.heartbeat_s)
            except queue.Empty:
                if self.closed.is_set():
                    return
                beat += 1
                yield pb.ServerMessage(heartbeat=pb.Heartbeat(sequence=beat))
                continue
            if item is _CLOSE:
                return
            if isinstance(item, pb.ServerMessage):
                yield item
            elif isinstance(item, Pending) and not item.done.is_set() and item.request:
                yield from self._stream_request(item)

    def _stream_request(self, p: Pending) -> Iterator[pb.ServerMessage | bytes]:
        assert p.request is not None
        arrays, request = p.arrays, p.request
        yield self._sending(pb.ServerMessage(request=request))
        for frame in codec.iter_payload_frames(arrays, p.request_id, self.chunk_bytes):
            if p.done.is_set() or self.closed.is_set():
                reason = "request withdrawn while being sent"
                yield pb.ServerMessage(cancel=pb.Cancel(request_id=p.request_id, reason=reason))
                return
            yield self._sending(frame)  # a serialized ServerMessage{chunk}
        self.send_started = None

    def _sending(self, message: pb.ServerMessage | bytes) -> pb.ServerMessage | bytes:
        """Note when a request's message was handed to gRPC: gRPC asks for the next one
        only once this one is on its way, so a site that stops reading leaves the time
        standing, and the watchdog closes the session (``check``)."""
        self.send_started = time.monotonic()
        return message

    def check(self) -> None:
        """Watchdog tick: close a session whose site went silent or was revoked. Run from
        the fleet's watchdog thread, not from ``outgoing``, which may sit blocked in a send
        to a frozen peer."""
        now = time.monotonic()
        silent = now - self.last_seen
        started = self.send_started
        if silent > self.fleet.dead_after_s:
            self.close(f"no message for {silent:.1f} s (heartbeat lost)", cancel=True)
        elif started is not None and now - started > self.fleet.stalled_send_s:
            self.close(
                f"not reading: a request has waited {now - started:.1f} s to be sent", cancel=True
            )
        else:
            self.revoked()

    def revoked(self) -> bool:
        """Re-check the certificate (the list may have changed); close the session if revoked."""
        if self.serial is None or not self.fleet.is_revoked(self.serial):
            return False
        self.fleet.refuse(self.site, "certificate revoked while connected; disconnecting")
        self.close("certificate revoked", cancel=True)
        return True

    # ---- site -> server ------------------------------------------------------------------

    def read(self, messages: Iterable[pb.SiteMessage | codec.ChunkFrame | codec.Malformed]) -> None:
        """Reader thread body: consume the site's stream until it ends, then close."""
        reason = "disconnected"
        try:
            for msg in messages:
                self.last_seen = time.monotonic()
                self.on_message(msg)
        except Exception as exc:  # grpc raises its own types when the peer vanishes
            reason = f"disconnected ({type(exc).__name__})"
        finally:
            self.close(reason)

    def on_message(self, msg: pb.SiteMessage | codec.ChunkFrame | codec.Malformed) -> None:
        if isinstance(msg, codec.Malformed):
            self.fleet.refuse(self.site, f"malformed message of {msg.size} bytes ({msg.error})")
            return
        try:
            if isinstance(msg, codec.ChunkFrame):
                self._on_chunk(msg)
                return
            kind = msg.WhichOneof("kind")
            if kind == "heartbeat":
                return
            if kind == "reply":
                self._on_reply(msg.reply)
            elif kind == "refusal":
                self.fleet.site_refused_job(self.site, msg.refusal.reason)
                self.close("refused to join the job (its policy)")
            elif kind == "chunk":
                self._on_chunk(codec.chunk_from_pb(msg.chunk))
            else:
                raise InvalidMessageError(f"unexpected {kind or 'empty'} message after hello")
        except InvalidMessageError as exc:
            self.fleet.refuse(self.site, str(exc))

    def _take(self, request_id: int) -> Pending | None:
        with self._lock:
            return self._pending.pop(request_id, None)

    def _fail(self, p: Pending, reason: str) -> None:
        self.fleet.refuse(self.site, f"{p.label}: {reason}")
        if p.resolve(Failure(self.site, f"invalid reply: {reason}")):
            self.fleet.record_closed(p.request_id, "answered")

    def _on_reply(self, reply: pb.Reply) -> None:
        b = reply.binding
        if self._assembly is not None:
            p0 = self._assembly[0]
            self._assembly = None
            self._fail(p0, "a new reply started before its arrays were complete")
        if b.job_id != self.fleet.job_id:
            self._skip = b.request_id
            raise InvalidMessageError(
                f"reply for job {b.job_id[:64]!r}, this server runs {self.fleet.job_id!r}"
            )
        p = self._take(b.request_id)
        if p is None:
            self._skip = b.request_id
            raise InvalidMessageError(self.fleet.explain_unknown(b))
        if b.round != p.message.round or b.kind != p.kind.name:
            self._skip = b.request_id
            self._fail(p, f"binding says round {b.round} {b.kind[:32]!r}, request was {p.label}")
            return
        body = reply.WhichOneof("body")
        try:
            if body == "error":
                if p.resolve(
                    Failure(self.site, f"site reported: {printable(reply.error.reason, 500)}")
                ):
                    self.fleet.record_closed(p.request_id, "answered")
                return
            if body != "payload":
                raise InvalidMessageError(f"a reply with no body does not answer {p.label}")
            exact, budget = p.reply_limits()
            asm = codec.PayloadAssembler(
                p.kind.name,
                int(b.round),
                reply.payload,
                p.request_id,
                self.fleet.chunk_bytes,
                budget,
                exact,
                alloc=self.fleet.buffers.take,
            )
        except InvalidMessageError as exc:
            self._skip = b.request_id
            self._fail(p, str(exc))
            return
        if asm.complete:
            self._finish(p, asm)
        else:
            self._assembly = (p, asm)

    def _finish(self, p: Pending, asm: codec.PayloadAssembler) -> None:
        try:
            payload = asm.result()
            for array in payload.arrays.values():
                if array.dtype.kind == "f":  # checked finite chunk by chunk as it arrived
                    vouch_finite(array)
            message = decode(payload, reply=True, site=self.site)
        except InvalidMessageError as exc:
            self._fail(p, str(exc))
            return
        if p.resolve(Reply(self.site, message)):
            self.fleet.record_closed(p.request_id, "answered")

    def _on_chunk(self, chunk: codec.ChunkFrame) -> None:
        if self._assembly is None or self._assembly[1].request_id != chunk.request_id:
            if chunk.request_id == self._skip:
                return
            raise InvalidMessageError(f"chunk for request {chunk.request_id} that is not arriving")
        p, asm = self._assembly
        if p.done.is_set():  # expired while arriving: stop holding its arrays
            self._assembly = None
            self._skip = chunk.request_id
            return
        try:
            if not asm.add(chunk):
                return
        except InvalidMessageError as exc:
            self._assembly = None
            self._skip = chunk.request_id
            self._fail(p, str(exc))
            return
        self._assembly = None
        self._finish(p, asm)

    # ---- end -----------------------------------------------------------------------------

    def close(self, reason: str, cancel: bool = False) -> None:
        """End the session once: every open request becomes a Failure naming ``reason``.

        ``cancel`` also cancels the RPC, for a peer that must be cut off now (silent,
        revoked, replaced) rather than let its stream end in order.
        """
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            pending = list(self._pending.values())
            self._pending.clear()
        if self._assembly is not None:
            pending.append(self._assembly[0])
            self._assembly = None
        for p in pending:
            if p.resolve(Failure(self.site, f"{reason} during {p.label}")):
                self.fleet.record_closed(p.request_id, "failed")
        self._out.put(_CLOSE)
        if cancel and self.cancel_rpc is not None:
            self.cancel_rpc()
        self.fleet.session_closed(self, reason)
