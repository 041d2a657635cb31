"""Where a secure round's time and bytes go, measured where the work happens.

``Probe.install()`` wraps the functions that do each part of the work, before the pool
forks, so the wrappers run inside the site workers too; each adds its CPU seconds (the
calling thread's ``thread_time``: compute, not time spent waiting for a core on a shared
machine) into counters in anonymous shared memory that the workers inherit, under a lock.

Site compute (in the workers): ``keys`` (two X25519 key pairs, the neighbour graph),
``shares`` (Shamir splits, pair keys, sealed bundles), ``encode+mask`` (fixed point, bundle
opening, pair seeds, the k + 1 ChaCha20 masks) and ``unmask answer``; ``fit handler`` is
the site's training (``Site.on_fit``: the same work in both modes). Server compute (in the
parent): ``routing`` (each phase's requests and the checked replies' bookkeeping),
``summing`` (masked inputs into the running sum, or plain updates into the aggregator),
``reconstruction`` (Shamir combine, a dropped site's pair seeds) and ``unmasking`` (the self
masks, and any dropped pair masks, off the sum; decoding).

Bytes: every request and reply of round 1 (left out of the timings anyway) is measured as
it would travel over gRPC: the payload's protobuf header plus its arrays' bytes
(``fleet/grpc/codec.py``), per message kind and direction.
"""

from __future__ import annotations

import functools
import mmap
import multiprocessing as mp
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SITE_LABELS = ("keys", "shares", "encode+mask", "unmask answer", "fit handler")
SERVER_LABELS = ("routing", "summing", "reconstruction", "unmasking")
LABELS = SITE_LABELS + SERVER_LABELS


class Probe:
    def __init__(self) -> None:
        self._shm = mmap.mmap(-1, 16 * len(LABELS))
        self._seconds = np.frombuffer(self._shm, np.float64, len(LABELS))
        self._calls = np.frombuffer(self._shm, np.int64, len(LABELS), 8 * len(LABELS))
        self._lock = mp.get_context("fork").Lock()  # inherited by the forked workers
        self.sent: dict[str, int] = defaultdict(int)  # site -> server, round 1, per kind
        self.received: dict[str, int] = defaultdict(int)  # server -> site, round 1
        self.messages: dict[str, int] = defaultdict(int)  # requests of round 1, per kind

    # -- compute -----------------------------------------------------------------------
    def _timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        index = LABELS.index(label)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with self._lock:
                    self._seconds[index] += spent
                    self._calls[index] += 1

        return wrapper

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        setattr(owner, name, self._timed(label, getattr(owner, name)))

    def install(self) -> None:
        from consortia.client import runtime
        from consortia.client import secure_aggregation as middleware
        from consortia.secagg import server as proto_server
        from consortia.secagg.site import SiteProtocol
        from consortia.server import secure_fit
        from consortia.strategy.aggregators import FitSink

        self._wrap(SiteProtocol, "keys", "keys")
        self._wrap(SiteProtocol, "shares", "shares")
        self._wrap(SiteProtocol, "mask", "encode+mask")
        self._wrap(middleware, "encode_weighted", "encode+mask")
        self._wrap(SiteProtocol, "unmask", "unmask answer")
        self._wrap(runtime.Site, "on_fit", "fit handler")
        server_round = proto_server.ServerRound
        for name in (
            "keys_requests",
            "accept_keys",
            "shares_requests",
            "accept_shares",
            "secure_inputs",
            "unmask_requests",
            "accept_unmask",
        ):
            self._wrap(server_round, name, "routing")
        self._wrap(server_round, "accept_masked", "summing")
        self._wrap(FitSink, "add", "summing")
        self._wrap(proto_server, "combine", "reconstruction")
        self._wrap(proto_server, "pair_secret", "reconstruction")
        self._wrap(proto_server, "unmask_sum", "unmasking")
        self._wrap(secure_fit, "decode_weighted", "unmasking")
        self._count_bytes()

    def compute(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {
                label: {"cpu_s": float(self._seconds[i]), "calls": int(self._calls[i])}
                for i, label in enumerate(LABELS)
            }

    # -- bytes -------------------------------------------------------------------------
    def _count_bytes(self) -> None:
        from consortia.core.messages import Reply, encode, kind_of
        from consortia.fleet.grpc.codec import DEFAULT_CHUNK_BYTES, payload_to_pb
        from consortia.fleet.pool import PoolFleet

        def wire_bytes(message: Any) -> int:
            payload = encode(message)
            header, _ = payload_to_pb(payload, DEFAULT_CHUNK_BYTES)
            return header.ByteSize() + payload.nbytes

        inner = PoolFleet.send
        probe = self

        def send(fleet: PoolFleet, requests: Any, timing: Any) -> Iterator[Any]:
            first = [m for _, m in requests if getattr(m, "round", None) == 1]
            for message in first:
                kind = kind_of(message).name
                probe.received[kind] += wire_bytes(message)
                probe.messages[kind] += 1
            for outcome in inner(fleet, requests, timing):
                if isinstance(outcome, Reply) and getattr(outcome.message, "round", None) == 1:
                    probe.sent[kind_of(outcome.message).name] += wire_bytes(outcome.message)
                yield outcome

        PoolFleet.send = send  # type: ignore[method-assign]
