"""The site end of a deployment: dial out to the server, answer its requests, stay connected.

``run_site`` keeps one stream to the server open, answers every request with the same
site app (``handle``) used in simulation, sends heartbeats, and reconnects on its own with
capped exponential backoff (with jitter, so sites do not reconnect in lockstep). One
worker thread runs the site's code, so a site never trains twice at once, even across a
reconnect, and the one app object keeps its state for the whole job. It returns when the
server says the job is over (unless ``keep_alive``), when ``stop`` is set, or on Ctrl-C.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from consortia.client.signing import attach_deployed
from consortia.core.errors import ConsortiaError
from consortia.core.join import JoinIns
from consortia.core.manifest import MAX_MANIFEST_CHARS, POLICY_REFUSAL_PREFIX
from consortia.core.messages import InvalidMessageError, decode, encode, kind_named
from consortia.fleet.base import SiteHandler
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.buffers import BufferPool
from consortia.fleet.grpc.credentials import site_credentials

log = logging.getLogger("consortia.client")

_POLL_S = 0.1  # how quickly the sender notices stop, cancellation and silence
_PERMANENT = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
_END = object()
_REFUSAL_LINGER_S = 2.0  # how long a refusing site waits for the server to hang up
_CONNECT = f"/{pb.DESCRIPTOR.services_by_name['Federation'].full_name}/Connect"


class SiteConnectionError(ConsortiaError):
    """The server refused this site for good, or every allowed attempt failed."""


class SiteRefusedJob(ConsortiaError):
    """This site's policy refused the job the server declared; the site told the server
    why and left. The message names the rule."""


@dataclass(frozen=True)
class _Work:
    conn: _Connection
    binding: pb.Binding
    message: Any


@dataclass(frozen=True)
class JobEnded:
    """What the server said when the job ended."""

    job_id: str
    status: str


class _Connection:
    """One stream to the server: what to send up it, and when it went quiet."""

    def __init__(
        self, site: SiteHandler, stop: threading.Event, chunk_bytes: int, heartbeat_s: float
    ):
        self.site = site
        self.stop = stop
        self.chunk_bytes_in = chunk_bytes  # the largest chunk we accept (told in hello)
        self.chunk_bytes = chunk_bytes  # what we send: lowered to the server's limit on welcome
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = 3 * heartbeat_s
        self.out: queue.Queue[object] = queue.Queue()
        self.ended = threading.Event()
        self.cancelled: set[int] = set()
        self.last_seen = time.monotonic()
        self.call: Any = None
        self.job_id: str | None = None
        self.error: str | None = None  # why the connection failed, for the final message
        self.job_end: JobEnded | None = None
        self.refused: str | None = None  # this site's policy refused the job: why

    def watch(self) -> None:
        """Watchdog thread: cancel the call on stop or when the server goes silent. It is a
        thread of its own because the sender and the reader may both be blocked on the network."""
        while not self.ended.wait(_POLL_S):
            silent = time.monotonic() - self.last_seen
            if self.stop.is_set() or silent > self.dead_after_s:
                if not self.stop.is_set():
                    log.warning("server silent for %.1f s; dropping the connection", silent)
                if self.call is not None:
                    self.call.cancel()
                return

    def end(self) -> None:
        self.ended.set()
        self.out.put(_END)

    def outgoing(self, hello: pb.Hello) -> Iterator[pb.SiteMessage | bytes]:
        yield pb.SiteMessage(hello=hello)
        next_beat, beat = time.monotonic() + self.heartbeat_s, 0
        while not self.ended.is_set():
            now = time.monotonic()
            try:
                item = self.out.get(timeout=_POLL_S)
            except queue.Empty:
                if now >= next_beat:
                    beat += 1
                    yield pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=beat))
                    next_beat = now + self.heartbeat_s
                continue
            if item is _END:
                return
            if isinstance(item, pb.SiteMessage):  # a refusal: the last thing we send
                yield item
                continue
            assert isinstance(item, tuple)
            reply, arrays = item
            rid = reply.binding.request_id
            if rid in self.cancelled:
                continue
            yield pb.SiteMessage(reply=reply)
            for frame in codec.iter_payload_frames(arrays, rid, self.chunk_bytes):
                if rid in self.cancelled or self.ended.is_set():
                    break  # the server drops what remains of a withdrawn request
                yield frame  # a serialized SiteMessage{chunk}
            next_beat = time.monotonic() + self.heartbeat_s


class _Receiver:
    """Turns the server's stream into work items, checking each message on the way."""

    def __init__(
        self,
        conn: _Connection,
        work: queue.Queue[_Work],
        max_model_bytes: int,
        buffers: BufferPool | None = None,
    ):
        self.conn = conn
        self.work = work
        self.max_model_bytes = max_model_bytes
        # run_site keeps one pool across connections: a reconnect reuses the memory.
        self.buffers = buffers if buffers is not None else BufferPool()
        self.current: tuple[pb.Request, codec.PayloadAssembler] | None = None

    def _refuse(self, binding: pb.Binding, reason: str) -> None:
        log.warning("refused request %d from the server: %s", binding.request_id, reason)
        self.conn.out.put((codec.error_reply(binding, f"site refused the request: {reason}"), []))

    def on_message(self, msg: pb.ServerMessage | codec.ChunkFrame) -> None:
        if isinstance(msg, codec.ChunkFrame):
            self._on_chunk(msg)
            return
        kind = msg.WhichOneof("kind")
        if kind == "request":
            self._on_request(msg.request)
        elif kind == "chunk":
            self._on_chunk(codec.chunk_from_pb(msg.chunk))
        elif kind == "cancel":
            rid = msg.cancel.request_id
            self.conn.cancelled.add(rid)
            if self.current is not None and self.current[1].request_id == rid:
                self.current = None
            log.info("server withdrew request %d: %s", rid, msg.cancel.reason[:200])
        elif kind == "job_end":
            end = msg.job_end
            self.conn.job_end = JobEnded(end.job_id, end.status)
            if self.conn.call is not None:
                self.conn.call.cancel()
        elif kind != "heartbeat":
            log.warning("ignored unexpected %s message from the server", kind or "empty")

    def _on_request(self, req: pb.Request) -> None:
        if self.current is not None:
            self._refuse(
                self.current[0].binding, "a new request arrived before its arrays were complete"
            )
            self.current = None
        b = req.binding
        try:
            if b.job_id != self.conn.job_id:
                raise InvalidMessageError(
                    f"request for job {b.job_id[:64]!r}, connected to {self.conn.job_id!r}"
                )
            kind_named(b.kind)  # this site must know the kind before it holds any bytes
            asm = codec.PayloadAssembler(
                b.kind,
                int(b.round),
                req.payload,
                b.request_id,
                self.conn.chunk_bytes_in,
                self.max_model_bytes,
                alloc=self.buffers.take,
            )
        except InvalidMessageError as exc:
            self._refuse(b, str(exc))
            return
        log.info("round %d %s: receiving (%.1f MB)", b.round, b.kind, asm.nbytes / 1e6)
        if asm.complete:
            self._ready(req, asm)
        else:
            self.current = (req, asm)

    def _ready(self, req: pb.Request, asm: codec.PayloadAssembler) -> None:
        try:
            message = decode(asm.result(), reply=False)
        except InvalidMessageError as exc:
            self._refuse(req.binding, str(exc))
            return
        self.work.put(_Work(self.conn, req.binding, message))

    def _on_chunk(self, chunk: codec.ChunkFrame) -> None:
        if self.current is None or self.current[1].request_id != chunk.request_id:
            if chunk.request_id not in self.conn.cancelled:
                log.warning("ignored a chunk for request %d that is not arriving", chunk.request_id)
            return
        req, asm = self.current
        try:
            if not asm.add(chunk):
                return
        except InvalidMessageError as exc:
            self.current = None
            self._refuse(req.binding, str(exc))
            return
        self.current = None
        self._ready(req, asm)


def _worker(work: queue.Queue[_Work | None], site: SiteHandler) -> None:
    """Run the site's code one request at a time; results go to the connection they came on."""
    while (item := work.get()) is not None:
        b, conn = item.binding, item.conn
        if conn.ended.is_set() or b.request_id in conn.cancelled:
            continue
        label = f"round {b.round} {b.kind}"
        log.info("%s: working", label)
        arrays: list[Any] = []
        try:
            payload = encode(site.handle(item.message))
            if payload.kind != b.kind or payload.round != b.round:
                raise InvalidMessageError(
                    f"the site answered a round {b.round} {b.kind} request with a round "
                    f"{payload.round} {payload.kind} message"
                )
            body, arrays = codec.payload_to_pb(payload, conn.chunk_bytes)
            reply = pb.Reply(binding=b, payload=body)
        except Exception as exc:  # the site's own code failed: tell the server why, keep serving
            text = str(exc)
            if text.startswith(POLICY_REFUSAL_PREFIX):  # as is: the server recognises it
                log.warning("%s: %s", label, text)
                reason = text
            else:
                log.exception("%s: the site's code failed", label)
                reason = f"{type(exc).__name__}: {exc}"
            reply, arrays = codec.error_reply(b, reason), []
        if not conn.ended.is_set():
            conn.out.put((reply, arrays))
            log.info("%s: reply sent", label)


def _channel(
    address: str, site_dir: Path | None, chunk_bytes: int, target_name: str | None
) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", chunk_bytes + codec.MESSAGE_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", -1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if site_dir is None:
        return grpc.insecure_channel(address, options=options)
    if target_name:
        options.append(("grpc.ssl_target_name_override", target_name))
    return grpc.secure_channel(address, site_credentials(site_dir), options=options)


def connect_method(
    channel: grpc.Channel,
    request_serializer: Callable[[Any], bytes] = codec.serialize_message,
    response_deserializer: Callable[[bytes], Any] = codec.decode_server_message,
) -> Any:
    """The Federation.Connect stream on ``channel``.

    Not protoc's generated stub (none is generated): its serializer could not pass the
    pre-encoded chunk frames that ``codec.serialize_message`` lets through untouched, and
    its deserializer would copy every chunk's data twice (``codec.decode_server_message``).
    """
    return channel.stream_stream(
        _CONNECT,
        request_serializer=request_serializer,
        response_deserializer=response_deserializer,
    )


def run_site(
    server_address: str,
    site: SiteHandler,
    pki_dir: str | Path | None = None,
    *,
    insecure: bool = False,
    stop: threading.Event | None = None,
    chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
    max_model_bytes: int = 8 * 2**30,
    heartbeat_s: float = 5.0,
    initial_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    max_attempts: int | None = None,
    server_name: str | None = None,
    keep_alive: bool = False,
    receipts: Path | None = None,
) -> JobEnded | None:
    """Serve ``site`` to the server at ``server_address`` until the job ends, ``stop`` is
    set or Ctrl-C; returns how the job ended (None if it was not the server that ended it).

    ``pki_dir`` is the site's folder from ``consortia keys add-site`` (site.pem, site.key,
    ca.pem). ``max_attempts`` bounds consecutive failed connection attempts (None: retry
    forever); a server that refuses the site's certificate ends the run at once with
    ``SiteConnectionError``. ``server_name`` overrides the name the server's certificate
    is checked against (when dialling an address its certificate does not list).
    ``keep_alive`` keeps the site connected after a job ends, for the server's next job.
    The site signs each update with its certificate's key and keeps the server's receipts
    in ``receipts`` (default: ``receipts.jsonl`` in ``pki_dir``; docs/ledger.md).
    """
    if pki_dir is None and not insecure:
        raise ConsortiaError("run_site needs the site's pki_dir (TLS always) unless insecure=True")
    if chunk_bytes < codec.MIN_CHUNK_BYTES:
        raise ConsortiaError(f"chunk_bytes must be at least {codec.MIN_CHUNK_BYTES}")
    if insecure:
        log.warning("INSECURE connection to %s: no TLS; for local experiments only", server_address)
    site_dir = None if insecure else Path(str(pki_dir))
    attach_deployed(site, site_dir, receipts)
    stop = stop or threading.Event()
    work: queue.Queue[_Work | None] = queue.Queue()
    worker = threading.Thread(target=_worker, args=(work, site), name="site-worker", daemon=True)
    worker.start()
    failures = 0
    conn: _Connection | None = None
    ended: JobEnded | None = None
    buffers = BufferPool()
    try:
        while not stop.is_set():
            conn = _Connection(site, stop, chunk_bytes, heartbeat_s)
            welcomed = _serve_once(
                server_address, site, site_dir, conn, work, max_model_bytes, server_name, buffers
            )
            if conn.refused is not None:
                raise SiteRefusedJob(conn.refused)
            if conn.job_end is not None:
                ended = conn.job_end
                log.info("job %s is over (%s)", ended.job_id, ended.status)
                if not keep_alive:
                    break
                log.info("keeping the connection for the server's next job")
            if stop.is_set():
                break
            failures = 0 if welcomed else failures + 1
            if max_attempts is not None and failures >= max_attempts:
                raise SiteConnectionError(
                    f"could not connect to {server_address} after {failures} attempt(s)"
                    + (f"; {conn.error}" if conn.error else "")
                )
            delay = min(max_backoff_s, initial_backoff_s * 2 ** max(0, failures - 1))
            delay *= random.uniform(0.5, 1.0)
            log.info("reconnecting to %s in %.1f s", server_address, delay)
            stop.wait(delay)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        stop.set()
        if conn is not None:
            if conn.call is not None:
                conn.call.cancel()
            conn.end()
        work.put(None)
    log.info("site %s stopped", site.site_id)
    return ended


def _join(site: SiteHandler, manifest: str) -> tuple[str | None, Any]:
    """Put the welcome's job manifest to the site's app (its policy middleware decides,
    as in simulation): (why it refuses, None) or (None, its join reply). A manifest it
    cannot read is refused too: a site does not join a job it cannot check."""
    if len(manifest) > MAX_MANIFEST_CHARS:
        return (
            f"{POLICY_REFUSAL_PREFIX}manifest: the server's job manifest of {len(manifest)} "
            f"characters is over the limit of {MAX_MANIFEST_CHARS}"
        ), None
    try:
        reply = site.handle(JoinIns(0, manifest))
    except Exception as exc:  # the policy's refusal, or a manifest that does not parse
        text = str(exc)
        if text.startswith(POLICY_REFUSAL_PREFIX):
            return text, None
        return (
            f"{POLICY_REFUSAL_PREFIX}manifest: cannot check the job ({type(exc).__name__}: {text})"
        ), None
    return None, reply


def _state(conn: _Connection, job_id: str, reply: Any) -> None:
    """Answer the Welcome's join: the reply carries the site's statement of its policy
    (digest and data-use agreement, or nothing without a policy) for the server's ledger.
    A reply that cannot travel is left unsent: the site still takes part, stating nothing."""
    try:
        payload = encode(reply)
        if payload.kind != "join":
            raise InvalidMessageError(f"the site answered the join with a {payload.kind} message")
        body, arrays = codec.payload_to_pb(payload, conn.chunk_bytes)
    except InvalidMessageError as exc:
        log.warning("this site's join reply is not sent (it states no policy): %s", exc)
        return
    binding = pb.Binding(
        job_id=job_id, round=0, request_id=codec.WELCOME_REQUEST_ID, kind=payload.kind
    )
    conn.out.put((pb.Reply(binding=binding, payload=body), arrays))


def _leave(conn: _Connection, reason: str) -> None:
    """Tell the server why this site does not join, then hang up."""
    log.error("%s", reason)
    conn.refused = reason
    conn.out.put(pb.SiteMessage(refusal=pb.Refusal(reason=reason[: codec.MAX_REASON_CHARS])))
    conn.out.put(_END)
    # The server closes the stream once it has read the refusal; if it does not, the
    # site leaves anyway, shortly after.
    call = conn.call
    if call is not None:
        timer = threading.Timer(_REFUSAL_LINGER_S, call.cancel)
        timer.daemon = True
        timer.start()


def _explain(details: str) -> str:
    """The last connection error, with a hint where the cause is a certificate."""
    if "Hostname Verification" in details or "No match found for server name" in details:
        return (
            f"the server's certificate is not for the name this site dialled ({details}): "
            "dial a name the server's certificate was made for (`consortia keys init "
            "--host NAME`), or pass --server-name with that name"
        )
    if "handshake" in details.lower() or "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"TLS handshake failed ({details}): the server and this site do not trust each "
            "other's certificates; check that the site's folder comes from this federation's "
            "`consortia keys add-site` and that its ca.pem is the federation's CA"
        )
    if "failed to connect" in details and "Socket closed" in details:
        return (
            f"the server closed the connection while it was being set up ({details}): it "
            "probably refused this site's certificate (not issued by the federation's CA?)"
        )
    return f"last error: {details}"


def _serve_once(
    address: str,
    site: SiteHandler,
    site_dir: Path | None,
    conn: _Connection,
    work: queue.Queue[Any],
    max_model_bytes: int,
    server_name: str | None,
    buffers: BufferPool,
) -> bool:
    """One connection's life; True if the server welcomed us (resets the backoff)."""
    receiver = _Receiver(conn, work, max_model_bytes, buffers)
    welcomed = False
    hello = pb.Hello(
        site_name=site.site_id,
        protocol_version=codec.PROTOCOL_VERSION,
        max_chunk_bytes=conn.chunk_bytes,
    )
    log.info("connecting to %s", address)
    with _channel(address, site_dir, conn.chunk_bytes, server_name) as channel:
        try:
            conn.call = connect_method(channel)(conn.outgoing(hello))
            threading.Thread(target=conn.watch, name="site-watchdog", daemon=True).start()
            for msg in conn.call:
                conn.last_seen = time.monotonic()
                if isinstance(msg, pb.ServerMessage) and msg.WhichOneof("kind") == "welcome":
                    w = msg.welcome
                    conn.job_id = w.job_id
                    conn.chunk_bytes = min(conn.chunk_bytes, w.max_chunk_bytes or conn.chunk_bytes)
                    conn.dead_after_s = 3 * max(conn.heartbeat_s, w.heartbeat_interval_s)
                    welcomed = True
                    log.info("connected to %s as %s (job %s)", address, w.site_name, w.job_id)
                    refusal, reply = _join(site, w.manifest)
                    if refusal is not None:
                        _leave(conn, refusal)  # then read on until the server hangs up
                    else:
                        _state(conn, w.job_id, reply)
                elif welcomed and conn.refused is None:
                    receiver.on_message(msg)
            if not conn.stop.is_set() and conn.job_end is None and conn.refused is None:
                log.warning("the server at %s closed the connection", address)
        except grpc.RpcError as exc:
            if conn.job_end is not None or conn.refused is not None:
                return True  # we cancelled the call ourselves (job over, or we refused it)
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code in _PERMANENT:
                raise SiteConnectionError(f"server refused site {site.site_id}: {details}") from exc
            conn.error = _explain(str(details))
            if not conn.stop.is_set():
                # The explanation, not gRPC's raw text: with retries on (the default) this
                # line is all an operator sees of a trust mismatch.
                log.warning(
                    "connection to %s failed (%s): %s",
                    address,
                    getattr(code, "name", code),
                    conn.error.removeprefix("last error: "),
                )
        finally:
            conn.end()
    return welcomed
