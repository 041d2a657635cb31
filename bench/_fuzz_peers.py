"""The peers of the fuzz benchmark (bench/_chaos_fuzz.py): how each kind of hostile peer
reaches a live ``consortia server`` and what it counts.

- ``SiteStream``: an enrolled site's stream after a real hello; sends any bytes, keeps
  itself alive with heartbeats and hands over the requests the server sends it.
- ``first_messages``: new streams with an enrolled certificate whose first message is
  not an acceptable hello: each must be refused before any session exists.
- ``tls_attempts``: TLS without a client certificate, or with one from another CA:
  no call may get through.
- ``raw_connections``: plain TCP bytes (garbage, partial or broken TLS ClientHellos,
  a plaintext HTTP/2 preface): the server must close every one, at the latest after its
  handshake timeout.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from consortia.core.messages import FitIns, FitRes, decode, encode
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.client import connect_method

CHUNK_BYTES = codec.MIN_CHUNK_BYTES  # small chunks: a real reply is several frames


@dataclass
class Received:
    """A request the server sent this stream, with its arrays assembled."""

    binding: pb.Binding
    message: object


class SiteStream:
    """One stream with an enrolled site's certificate that said a real hello."""

    def __init__(self, address: str, creds: grpc.ChannelCredentials, heartbeat_s: float) -> None:
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self.channel = grpc.secure_channel(address, creds)
        self.call = connect_method(self.channel)(self._requests())
        self.welcome: pb.Welcome | None = None
        self.requests: queue.Queue[Received] = queue.Queue()
        self.job_end = threading.Event()
        self.ended: list[BaseException] = []
        self._welcomed = threading.Event()
        self._stop = threading.Event()
        self._assembly: tuple[pb.Request, codec.PayloadAssembler] | None = None
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True).start()
        hello = pb.Hello(protocol_version=codec.PROTOCOL_VERSION, max_chunk_bytes=2**20)
        self.send(pb.SiteMessage(hello=hello).SerializeToString())
        if not self._welcomed.wait(20):
            raise RuntimeError(f"no welcome from the server: {self.ended}")

    def _requests(self) -> Iterator[bytes]:
        while (m := self._out.get()) is not None:
            yield m

    def _beat(self, every: float) -> None:
        n = 0
        while not self._stop.wait(every):
            n += 1
            self.send(pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=n)).SerializeToString())

    def _read(self) -> None:
        try:
            for m in self.call:
                self._on_message(m)
        except grpc.RpcError as exc:
            self.ended.append(exc)
        finally:
            self.job_end.set()  # the stream is over either way: nobody should wait on it

    def _on_message(self, m: pb.ServerMessage | codec.ChunkFrame) -> None:
        if isinstance(m, codec.ChunkFrame):
            assert self._assembly is not None, "a chunk the server did not announce"
            request, asm = self._assembly
            if asm.add(m):
                self._assembly = None
                self._received(request, asm)
            return
        kind = m.WhichOneof("kind")
        if kind == "welcome":
            self.welcome = m.welcome
            self._welcomed.set()
        elif kind == "request":
            b = m.request.binding
            asm = codec.PayloadAssembler(
                b.kind, int(b.round), m.request.payload, b.request_id, 2**20, 2**30
            )
            if asm.complete:
                self._received(m.request, asm)
            else:
                self._assembly = (m.request, asm)
        elif kind == "job_end":
            self.job_end.set()

    def _received(self, request: pb.Request, asm: codec.PayloadAssembler) -> None:
        message = decode(asm.result(), reply=False)
        self.requests.put(Received(request.binding, message))

    def send(self, data: bytes) -> None:
        self._out.put(data)

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        self.channel.close()


def real_frames(site: str, received: Received) -> list[bytes]:
    """The frames a real client of ``site`` would send for ``received``: its hello, a
    heartbeat, an honest fit reply (a zero update) and that reply's chunks."""
    fit = received.message
    assert isinstance(fit, FitIns), received
    res = FitRes(site, fit.round, np.zeros_like(fit.weights), 15, {"loss": 0.25})
    body, arrays = codec.payload_to_pb(encode(res), CHUNK_BYTES)
    reply = pb.SiteMessage(reply=pb.Reply(binding=received.binding, payload=body))
    hello = pb.Hello(site_name=site, protocol_version=codec.PROTOCOL_VERSION, max_chunk_bytes=2**20)
    return [
        pb.SiteMessage(hello=hello).SerializeToString(),
        pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=7)).SerializeToString(),
        reply.SerializeToString(),
        *codec.iter_payload_frames(arrays, received.binding.request_id, CHUNK_BYTES),
    ]


@dataclass
class StreamTally:
    """What became of streams that each carried one hostile first message."""

    refused: int = 0  # the server ended the call with an error status
    welcomed: int = 0  # the server said welcome: a breach
    other: int = 0  # ended some other way (listed in ``notes``)

    def __post_init__(self) -> None:
        self.notes: list[str] = []


def _one_call(channel: grpc.Channel, first: bytes, tally: StreamTally) -> None:
    def requests() -> Iterator[bytes]:
        yield first

    try:
        for m in connect_method(channel)(requests(), timeout=15):
            if not isinstance(m, codec.ChunkFrame) and m.WhichOneof("kind") == "welcome":
                tally.welcomed += 1
                return
        tally.other += 1
        tally.notes.append("stream ended without an error status")
    except grpc.RpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            tally.other += 1
            tally.notes.append(f"{code.name}: {exc.details()}")
        else:
            tally.refused += 1


def first_messages(
    address: str, creds: grpc.ChannelCredentials, firsts: list[bytes]
) -> StreamTally:
    """One new stream per message, one after another on one connection (at most two
    streams per certificate may be open, and the site's own stream holds one)."""
    tally = StreamTally()
    with grpc.secure_channel(address, creds) as channel:
        for first in firsts:
            _one_call(channel, first, tally)
    return tally


def tls_attempts(address: str, creds: grpc.ChannelCredentials, firsts: list[bytes]) -> StreamTally:
    """One new connection per message, with credentials the server must not accept."""
    tally = StreamTally()
    for first in firsts:
        with grpc.secure_channel(address, creds) as channel:
            _one_call(channel, first, tally)
    return tally


def client_hello(server_name: str = "localhost") -> bytes:
    """The bytes of a real TLS ClientHello (what Python's TLS stack sends first)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        tls.do_handshake()
    return outgoing.read()


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@dataclass
class RawTally:
    """What became of plain TCP connections that sent hostile bytes."""

    closed: int = 0  # the server closed the connection (refused)
    held: int = 0  # still open after the wait: the server held it past its handshake timeout
    unreachable: int = 0  # could not connect at all
    answered_bytes: int = 0  # bytes the server sent back (a TLS alert, at most)


def raw_connections(host: str, port: int, payloads: list[bytes], wait_s: float) -> RawTally:
    """Open one connection per payload, send it, keep the connection open, and wait up to
    ``wait_s`` for the server to close each one (all at once, so a partial handshake
    costs the handshake timeout once, not once per connection)."""
    tally = RawTally()
    sel = selectors.DefaultSelector()
    for data in payloads:
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((host, port))
            s.sendall(data)
        except OSError:
            tally.unreachable += 1
            s.close()
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    end = time.monotonic() + wait_s
    while sel.get_map() and (left := end - time.monotonic()) > 0:
        for key, _ in sel.select(min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                got = sock.recv(65536)
            except OSError:  # reset by the server: closed as well
                got = b""
            tally.answered_bytes += len(got)
            if not got:
                tally.closed += 1
                sel.unregister(sock)
                sock.close()
    for key in list(sel.get_map().values()):
        tally.held += 1
        sel.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return tally
