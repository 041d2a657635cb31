"""``GrpcFleet``: the server end of a real deployment, behind the ordinary Fleet interface.

Sites connect out to this server over mutual TLS and keep one stream open; ``send()``
pushes each request down its site's stream and yields outcomes in request order within
the deadline. A site's name is the common name of its client certificate (signed by the
federation CA, not revoked): nothing it sends can change who it is.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import resource
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from consortia.core.errors import ConsortiaError
from consortia.core.join import JOIN, JoinIns, JoinRes, JoinStatement, join_statement
from consortia.core.manifest import MAX_MANIFEST_CHARS, JobManifest, printable
from consortia.core.messages import InvalidMessageError, kind_of
from consortia.fleet.base import Failure, Fleet, Outcome, Reply, Timing, grace_failure
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.buffers import BufferPool
from consortia.fleet.grpc.credentials import server_credentials
from consortia.fleet.grpc.session import Pending, Session
from consortia.ledger.chain import LedgerError
from consortia.ledger.sign import SiteIdentity, identity_from_certificate
from consortia.security.pki import PkiError, RevocationWatcher, check_site_name

log = logging.getLogger("consortia.fleet.grpc")

_SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name
_HELLO_TIMEOUT_S = 10.0
# A TCP connection that has not finished its TLS handshake after this long is closed
# (gRPC's default, 120 s, lets a stranger hold descriptors with idle connections).
HANDSHAKE_TIMEOUT_S = 5.0
# Streams one certificate may hold open at once: a site needs one (two while it
# reconnects); more would let one enrolled site take the server's workers from the others.
STREAMS_PER_CERTIFICATE = 2
DEFAULT_MAX_SITES = 1000
# Sites whose policy statements are kept: bounded, so that names taken on trust (an
# --insecure run) cannot grow the server's memory.
MAX_STATEMENTS = 10_000
# A message of a request that gRPC has not taken for sending after this long means the
# site stopped reading (flow control holds the send): its session is closed, so that
# neither a server thread nor queued models stay pinned behind it. Generous: one chunk is
# at most a few MiB, which takes seconds even on a slow link.
STALLED_SEND_S = 60.0
# File descriptors kept free for everything but connections: the store, checkpoints,
# logs, the metrics file, TensorBoard.
RESERVED_DESCRIPTORS = 128


def connection_cap(max_sites: int) -> int:
    """Connections the server accepts at once: two per site (one more while a site
    reconnects), within what the process may open. Beyond it gRPC closes new connections
    at once, so strangers can never use up the descriptors a checkpoint needs. The soft
    limit on descriptors is raised toward the hard one when that is needed and allowed."""
    wanted = 2 * max_sites + 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = wanted if soft == resource.RLIM_INFINITY else soft - RESERVED_DESCRIPTORS
    cap = max(1, min(wanted, room))
    if cap < max_sites:
        log.warning(
            "only %d connections fit in this process's %d file descriptors; %d sites "
            "were asked for (raise `ulimit -n`)",
            cap,
            soft,
            max_sites,
        )
    return cap


_REMEMBERED_REQUESTS = 100_000  # closed request ids kept to name duplicates and replays


class SitesTimeoutError(ConsortiaError):
    """Fewer sites than needed connected in time."""


class GrpcFleet(Fleet):
    """A gRPC server that sites dial into; implements ``Fleet`` for the round loop.

    ``address`` may use port 0; the bound port is ``self.port``. ``pki_dir`` is a folder
    made by ``consortia keys init``; ``insecure=True`` (no TLS, names taken on trust from
    the site) exists only for local experiments and logs a warning.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:0",
        *,
        job_id: str,
        pki_dir: str | Path | None = None,
        insecure: bool = False,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        heartbeat_s: float = 5.0,
        dead_after_s: float | None = None,
        max_sites: int = DEFAULT_MAX_SITES,
        stalled_send_s: float = STALLED_SEND_S,
        wait_for_manifest: bool = False,
    ) -> None:
        if not insecure and pki_dir is None:
            raise ConsortiaError("GrpcFleet needs pki_dir (TLS always) unless insecure=True")
        if chunk_bytes < codec.MIN_CHUNK_BYTES:
            raise ConsortiaError(
                f"chunk_bytes must be at least {codec.MIN_CHUNK_BYTES}, got {chunk_bytes}"
            )
        self.job_id = job_id
        self.chunk_bytes = chunk_bytes
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s if dead_after_s is not None else 3 * heartbeat_s
        self.stalled_send_s = stalled_send_s
        self.buffers = BufferPool()  # the sites' replies land in the last round's memory
        self.insecure = insecure
        self._revocations = None if insecure else RevocationWatcher(Path(str(pki_dir)))
        self._sessions: dict[str, Session] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed_requests: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._latest_round = 0
        self.refusals: deque[tuple[str, str]] = deque(maxlen=1000)
        self.refusal_count = 0
        # The job's manifest for each Welcome (``admit``). With ``wait_for_manifest`` a
        # site that connects before the run driver declared it waits for it, so no site
        # is ever welcomed to a job without its declaration.
        self.manifest = ""
        self._manifest_ready = threading.Event()
        if not wait_for_manifest:
            self._manifest_ready.set()
        self._join_refusals: dict[str, str] = {}
        self._statements: dict[str, JoinStatement] = {}
        max_msg = chunk_bytes + codec.MESSAGE_OVERHEAD_BYTES
        options = [
            ("grpc.max_receive_message_length", max_msg),
            ("grpc.max_send_message_length", -1),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            # gRPC binds with SO_REUSEPORT by default: a second server on the same port
            # would then share the sites with the first. One port, one server.
            ("grpc.so_reuseport", 0),
            ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT_S * 1000)),
            ("grpc.max_allowed_incoming_connections", connection_cap(max_sites)),
        ]
        # Each connected site's certificate key: what its update signatures must verify with
        self._identities: dict[str, SiteIdentity] = {}
        self._streams: dict[int, int] = {}  # certificate serial -> streams open
        self._streams_lock = threading.Lock()
        # One worker drains each site's outgoing stream; a few spare ones refuse extras.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_sites + 4, thread_name_prefix="grpc-fleet"),
            options=options,
            maximum_concurrent_rpcs=max_sites,
        )
        # Registered by hand rather than with the generated helper only to decode requests
        # with a deserializer that cannot raise (see codec.decode_site_message).
        connect = grpc.stream_stream_rpc_method_handler(
            _Servicer(self).Connect,
            request_deserializer=codec.decode_site_message,
            response_serializer=codec.serialize_message,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, {"Connect": connect}),)
        )
        try:
            if insecure:
                log.warning(
                    "INSECURE gRPC fleet on %s: no TLS, sites are who they claim to be. "
                    "Use only for local experiments.",
                    address,
                )
                self.port = self._server.add_insecure_port(address)
            else:
                creds = server_credentials(Path(str(pki_dir)))
                self.port = self._server.add_secure_port(address, creds)
        except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            raise ConsortiaError(
                f"cannot listen on {address}: the port is in use (another consortia server?) "
                "or the address is not this machine's"
            )
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"
        self._server.start()
        self._stopped = threading.Event()
        threading.Thread(target=self._watchdog, name="grpc-fleet-watchdog", daemon=True).start()
        log.info("gRPC fleet for job %r listening on %s", job_id, self.address)

    # ---- Fleet ---------------------------------------------------------------------------

    def sites(self) -> list[str]:
        with self._cond:
            return sorted(s for s, sess in self._sessions.items() if not sess.closed.is_set())

    def wait_for_sites(self, n: int, timeout: float) -> list[str]:
        """Block until at least ``n`` sites are connected; return them, sorted."""
        end = time.monotonic() + timeout
        with self._cond:
            while len(self.sites()) < n:
                left = end - time.monotonic()
                if left <= 0:
                    raise SitesTimeoutError(
                        f"only {len(self.sites())} of {n} sites connected after {timeout:g} s: "
                        f"{self.sites()}"
                    )
                self._cond.wait(left)
            return self.sites()

    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Outcome]:
        """Dispatch every request now; the returned iterator collects them in order."""
        deadline = time.monotonic() + timing.deadline_s
        items: list[Pending | Failure] = []
        arrived = _Arrivals(timing)
        try:
            for site, message in requests:
                kind = kind_of(message)
                with self._cond:
                    session = self._sessions.get(site)
                    self._latest_round = max(self._latest_round, int(message.round))
                if session is None or session.closed.is_set() or session.revoked():
                    items.append(Failure(site, "not connected"))
                    continue
                p = Pending(next(self._ids), site, message, kind, on_done=arrived.note)
                session.submit(p)
                items.append(p)
        except BaseException:
            # A message that cannot be sent (unregistered kind, dtype that cannot travel)
            # raises here, after earlier requests went out. No one will collect those, so
            # withdraw them as _collect does when its caller stops early; otherwise they
            # stayed open and kept their sites busy with work nobody waits for.
            for item in items:
                if isinstance(item, Pending) and item.resolve(Failure(item.site, "abandoned")):
                    self._expire(item, "abandoned")
            raise
        return self._collect(items, deadline, timing, arrived)

    def _collect(
        self,
        items: list[Pending | Failure],
        deadline: float,
        timing: Timing,
        arrived: _Arrivals,
    ) -> Iterator[Outcome]:
        try:
            for item in items:
                if isinstance(item, Failure):
                    yield item
                    continue
                if not arrived.wait(item, deadline):
                    failure = (
                        grace_failure(item.site, timing)
                        if arrived.grace_over()
                        else Failure(
                            item.site, f"no reply within the {timing.deadline_s:g} s deadline"
                        )
                    )
                    if item.resolve(failure):
                        self._expire(item, failure.reason)
                assert item.outcome is not None
                yield item.outcome
        finally:  # the caller stopped early: nothing stays open behind its back
            for item in items:
                if isinstance(item, Pending) and item.resolve(Failure(item.site, "abandoned")):
                    self._expire(item, "abandoned")

    def _expire(self, p: Pending, reason: str) -> None:
        if p.session is not None:
            p.session.expire(p, reason)
        else:
            self.record_closed(p.request_id, "expired")

    def _watchdog(self) -> None:
        while not self._stopped.wait(min(1.0, self.heartbeat_s / 2)):
            with self._cond:
                sessions = list(self._sessions.values())
            for s in sessions:
                s.check()

    def admit(self, manifest: JobManifest, deadline_s: float) -> dict[str, str]:
        """Declare the job's manifest: every Welcome from now on carries it, and each site
        answers it as it connects (a refusing site says why and leaves: see
        ``site_refused_job``), so nothing is refused here."""
        text = manifest.to_json()
        if len(text) > MAX_MANIFEST_CHARS:
            raise ConsortiaError(f"the job's manifest is over {MAX_MANIFEST_CHARS} characters")
        with self._cond:
            self.manifest = text
        self._manifest_ready.set()
        return {}

    def join_refusals(self) -> dict[str, str]:
        with self._cond:
            return dict(self._join_refusals)

    def site_refused_job(self, site: str, reason: str) -> None:
        """A site's policy refused the job at its welcome: log it (escaped: the text is
        the site's) and keep it for the summary; the session closes."""
        shown = printable(reason, codec.MAX_REASON_CHARS)
        log.warning("site %s refused to join job %s: %s", site, self.job_id, shown)
        with self._cond:
            if site not in self._join_refusals and len(self._join_refusals) >= 10_000:
                return  # bounded: a site cannot grow the server's memory by refusing
            self._join_refusals[site] = shown

    def expect_join(self, session: Session) -> None:
        """The Welcome about to go to ``session`` is the job's join request: the site's
        ``join`` reply (bound to ``codec.WELCOME_REQUEST_ID``) states its policy."""
        join = Pending(
            codec.WELCOME_REQUEST_ID,
            session.site,
            JoinIns(0, self.manifest),
            JOIN,
            on_done=lambda outcome: self._joined(session.site, outcome),
        )
        session.await_reply(join)

    def _joined(self, site: str, outcome: Outcome) -> None:
        """Keep what the site stated at its latest join. A statement that does not check
        out is dropped, logged and counted as a refusal: the site is then on record as
        stating nothing, never with text the server could not check."""
        if not isinstance(outcome, Reply) or not isinstance(outcome.message, JoinRes):
            return  # the session ended first, or the reply was refused (and logged)
        try:
            statement = join_statement(outcome.message)
        except InvalidMessageError as exc:
            self.refuse(site, f"its policy statement is dropped: {exc}")
            statement = None
        with self._cond:
            if statement is None:
                self._statements.pop(site, None)
            elif site in self._statements or len(self._statements) < MAX_STATEMENTS:
                self._statements[site] = statement
        if statement is not None:
            log.info("site %s joined under policy %s", site, statement.policy_sha256)

    def join_statement(self, site: str) -> JoinStatement | None:
        with self._cond:
            return self._statements.get(site)

    def end_job(self, status: str) -> None:
        """Every connected site hears that the job is over before the streams close."""
        with self._cond:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.end_job(self.job_id, status)
        log.info("job %s %s: told %d connected sites", self.job_id, status, len(sessions))

    def close(self) -> None:
        self._stopped.set()
        for s in list(self._sessions.values()):
            s.close("server shutting down")
        self._server.stop(grace=0.5).wait(2.0)
        self.buffers.clear()

    # ---- bookkeeping used by sessions ----------------------------------------------------

    def refuse(self, site: str, reason: str) -> None:
        """Log and count a refused message or connection; nothing else changes."""
        log.warning("refused from %s: %s", site, reason)
        with self._cond:
            self.refusal_count += 1
            self.refusals.append((site, reason))

    def record_closed(self, request_id: int, how: str) -> None:
        with self._cond:
            self._closed_requests[request_id] = (how, "")
            while len(self._closed_requests) > _REMEMBERED_REQUESTS:
                self._closed_requests.popitem(last=False)

    def explain_unknown(self, b: pb.Binding) -> str:
        """Why a reply matches no open request: duplicate, late, stale or invented."""
        what = f"round {b.round} {b.kind[:32]!r}"
        with self._cond:
            closed = self._closed_requests.get(b.request_id)
            latest = self._latest_round
        if closed is not None and closed[0] == "answered":
            return f"second reply for {what} (request {b.request_id}) refused"
        if closed is not None and closed[0] == "expired":
            return f"reply for {what} arrived after its deadline; refused"
        if b.round < latest:
            return f"stale reply for {what}; the federation is at round {latest}"
        return f"reply for {what} matches no open request ({b.request_id})"

    def session_opened(self, session: Session) -> None:
        with self._cond:
            old = self._sessions.get(session.site)
            self._sessions[session.site] = session
            self._cond.notify_all()
        if old is not None:
            old.close("replaced by a new connection from the same site", cancel=True)
        log.info("site %s connected (%d connected)", session.site, len(self.sites()))

    def session_closed(self, session: Session, reason: str) -> None:
        with self._cond:
            if self._sessions.get(session.site) is session:
                del self._sessions[session.site]
            self._cond.notify_all()
        log.info("site %s left: %s", session.site, reason)

    def is_revoked(self, serial: int) -> bool:
        """Fails closed: an unreadable or forged revocation list revokes everyone."""
        assert self._revocations is not None
        try:
            return self._revocations.is_revoked(serial)
        except (PkiError, OSError) as exc:
            log.error("cannot read the revocation list, refusing every site: %s", exc)
            return True

    @staticmethod
    def certificate_serial(context: grpc.ServicerContext) -> int | None:
        """The serial of the peer's verified certificate (None without TLS or one)."""
        pems = context.auth_context().get("x509_pem_cert", [])
        if len(pems) != 1:
            return None
        return int(x509.load_pem_x509_certificate(pems[0]).serial_number)

    def open_stream(self, serial: int) -> bool:
        """Count one more stream for a certificate; False (not counted) past the cap."""
        with self._streams_lock:
            held = self._streams.get(serial, 0)
            if held >= STREAMS_PER_CERTIFICATE:
                return False
            self._streams[serial] = held + 1
            return True

    def close_stream(self, serial: int) -> None:
        with self._streams_lock:
            left = self._streams.get(serial, 0) - 1
            if left > 0:
                self._streams[serial] = left
            else:
                self._streams.pop(serial, None)

    def identify(self, context: grpc.ServicerContext, hello: pb.Hello) -> tuple[str, int | None]:
        """The site's name and certificate serial from its certificate (insecure: its name
        on trust, no serial); raises if the site is refused."""
        if self.insecure:
            return check_site_name(hello.site_name), None
        auth = context.auth_context()
        names = auth.get("x509_common_name", [])
        pems = auth.get("x509_pem_cert", [])
        if len(names) != 1 or len(pems) != 1:
            raise PkiError("no client certificate presented")
        name = check_site_name(names[0].decode("utf-8", "replace"))
        serial = x509.load_pem_x509_certificate(pems[0]).serial_number
        if self.is_revoked(serial):
            raise PkiError(f"certificate of site {name!r} (serial {serial:x}) is revoked")
        if hello.site_name and hello.site_name != name:
            raise PkiError(
                f"site claims to be {hello.site_name!r} but its certificate says {name!r}"
            )
        try:
            identity = identity_from_certificate(pems[0])
        except LedgerError as exc:
            raise PkiError(f"site {name!r}: {exc}") from None
        with self._cond:
            self._identities[name] = identity
        return name, serial

    def site_identity(self, site: str) -> SiteIdentity | None:
        """The key of the certificate ``site`` last authenticated with (None: insecure)."""
        with self._cond:
            return self._identities.get(site)


class _Arrivals:
    """Replies arrived so far in one phase, to end it a grace period after the minimum."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.replies = 0
        self.met_at: float | None = None
        self._cond = threading.Condition()

    def note(self, outcome: Outcome) -> None:
        with self._cond:
            if not isinstance(outcome, Failure):
                self.replies += 1
                if self.met_at is None and 0 < self.timing.min_replies <= self.replies:
                    self.met_at = time.monotonic()
            self._cond.notify_all()

    def grace_over(self) -> bool:
        with self._cond:
            return self.timing.grace_over(self.replies, self.met_at, time.monotonic())

    def wait(self, p: Pending, deadline: float) -> bool:
        """Until ``p`` is resolved (True), or the deadline or the grace period ends."""
        with self._cond:
            while not p.done.is_set():
                now = time.monotonic()
                end = deadline
                if self.timing.grace_s is not None and self.met_at is not None:
                    end = min(end, self.met_at + self.timing.grace_s)
                if now >= end:
                    return False
                self._cond.wait(end - now)
            return True


class _Servicer:
    def __init__(self, fleet: GrpcFleet) -> None:
        self.fleet = fleet

    def Connect(  # name fixed by the generated service
        self,
        request_iterator: Iterator[pb.SiteMessage | codec.ChunkFrame | codec.Malformed],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.ServerMessage | bytes]:
        fleet = self.fleet
        peer = context.peer()
        serial = fleet.certificate_serial(context)
        if serial is not None and not fleet.open_stream(serial):
            reason = (
                f"certificate {serial:x} already holds {STREAMS_PER_CERTIFICATE} streams; "
                "this one is refused"
            )
            fleet.refuse(peer, f"connection refused: {reason}")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
        if serial is not None:
            context.add_callback(lambda: fleet.close_stream(serial))
        # A peer that never says hello must not hold a worker thread forever.
        timer = threading.Timer(_HELLO_TIMEOUT_S, context.cancel)
        timer.start()
        try:
            first = next(request_iterator)
        except Exception:  # the peer left or was cancelled before saying hello
            return iter(())
        finally:
            timer.cancel()
        try:
            if not isinstance(first, pb.SiteMessage) or first.WhichOneof("kind") != "hello":
                raise InvalidMessageError("the first message must be hello")
            hello = first.hello
            if hello.protocol_version != codec.PROTOCOL_VERSION:
                raise InvalidMessageError(
                    f"protocol version {hello.protocol_version}, server speaks "
                    f"{codec.PROTOCOL_VERSION}"
                )
            site, serial = fleet.identify(context, hello)
        except (PkiError, InvalidMessageError, ValueError) as exc:
            fleet.refuse(peer, f"connection refused: {exc}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise  # not reached: abort raises
        if not fleet._manifest_ready.wait(_HELLO_TIMEOUT_S):
            reason = "the job is not ready yet; try again"
            context.abort(grpc.StatusCode.UNAVAILABLE, reason)
        # The site's receive limit, but never tiny chunks: those would only burn server CPU.
        their_max = max(codec.MIN_CHUNK_BYTES, hello.max_chunk_bytes or codec.DEFAULT_CHUNK_BYTES)
        session = Session(fleet, site, min(fleet.chunk_bytes, their_max), serial)
        session.cancel_rpc = context.cancel
        fleet.expect_join(session)  # before the site can hear the Welcome and answer it
        fleet.session_opened(session)
        context.add_callback(lambda: session.close("disconnected (stream ended)"))
        threading.Thread(
            target=session.read, args=(request_iterator,), name=f"read-{site}", daemon=True
        ).start()
        welcome = pb.Welcome(
            job_id=fleet.job_id,
            protocol_version=codec.PROTOCOL_VERSION,
            max_chunk_bytes=fleet.chunk_bytes,
            heartbeat_interval_s=fleet.heartbeat_s,
            site_name=site,
            manifest=fleet.manifest,
        )
        return session.outgoing(welcome)
