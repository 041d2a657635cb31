"""What the fuzz benchmark sends each round, from which peers, and what it counted
(bench/_chaos_fuzz.py has the whole story)."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from _fuzz_job import HONEST, HOSTILE, Pki
from _fuzz_peers import (
    HTTP2_PREFACE,
    RawTally,
    Received,
    SiteStream,
    StreamTally,
    client_hello,
    first_messages,
    raw_connections,
    real_frames,
    tls_attempts,
)
from _hostile import expected_refusals, hostile_messages, mutate, would_be_welcomed
from consortia.fleet.grpc.server import HANDSHAKE_TIMEOUT_S

# Share of each round's messages per peer kind (the rest, by largest remainder).
SHARES = {
    "site stream: hypothesis": 0.45,
    "site stream: mutated frames": 0.25,
    "new stream, mallory's cert": 0.03,
    "new stream, honest certs": 0.09,
    "tls: no client cert": 0.03,
    "tls: another CA's cert": 0.03,
    "tcp: raw bytes": 0.12,
}
_BATCH = 50


def split(total: int, shares: dict[str, float]) -> dict[str, int]:
    """``total`` shared out in proportion to ``shares``, summing to ``total`` exactly."""
    exact = {k: total * v / sum(shares.values()) for k, v in shares.items()}
    out = {k: math.floor(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: out[k] - exact[k])[: total - sum(out.values())]:
        out[k] += 1
    return out


def hypothesis_bytes(strategy: st.SearchStrategy[bytes], n: int, key: int) -> list[bytes]:
    """``n`` examples of ``strategy``, drawn by Hypothesis's own engine (generation only:
    nothing fails, so there is nothing to shrink), reproducible from ``key``."""
    out: list[bytes] = []

    @seed(key)
    @settings(
        max_examples=max(1, math.ceil(n / _BATCH)),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(strategy, min_size=_BATCH, max_size=_BATCH))
    def collect(batch: list[bytes]) -> None:
        out.extend(batch)

    while len(out) < n:
        collect()
        key += 1
    return out[:n]


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


class Fuzzer:
    """Sends ``total`` hostile messages over ``rounds`` rounds and keeps the tallies."""

    def __init__(self, pki: Pki, total: int, rounds: int, rng: random.Random) -> None:
        self.pki, self.total, self.rounds, self.rng = pki, total, rounds, rng
        self.sent: Counter[str] = Counter()
        self.mutations: Counter[str] = Counter()
        self.stream_sent: list[bytes] = []  # everything sent on mallory's live stream
        self.answers: dict[int, int] = {}  # stream_sent position of mallory's answer -> round
        self.frames: list[bytes] | None = None  # real frames of round 1, mutated later
        self.streams: dict[str, StreamTally] = {}
        self.raw = RawTally()
        self.notes: list[str] = []
        self.hello = client_hello()

    def quota(self, index: int) -> int:
        extra = 1 if index < self.total % self.rounds else 0
        return self.total // self.rounds + extra if index < self.rounds else 0

    def _mutants(self, n: int, frames: list[bytes]) -> list[bytes]:
        out = []
        for _ in range(n):
            how, data = mutate(frames, self.rng)
            self.mutations[how] += 1
            out.append(data)
        return out

    def _firsts(self, n: int, site: str, pool: list[bytes], frames: list[bytes]) -> list[bytes]:
        """First messages for new streams of ``site``'s certificate: Hypothesis's and
        mutated real frames, never a hello the server would rightly accept."""
        out: list[bytes] = []
        while len(out) < n:
            data = pool.pop() if pool and self.rng.random() < 0.5 else mutate(frames, self.rng)[1]
            if not would_be_welcomed(data, site):
                out.append(data)
        return out

    def _raw_payloads(self, n: int, pool: list[bytes]) -> list[bytes]:
        out = []
        for i in range(n):
            kind = i % 4
            if kind == 0:
                out.append(self.rng.randbytes(self.rng.randint(1, 300)))
            elif kind == 1:
                out.append(self.hello[: self.rng.randrange(1, len(self.hello))])
            elif kind == 2:
                out.append(mutate([self.hello], self.rng)[1])
            else:
                out.append(HTTP2_PREFACE + (pool.pop() if pool else b""))
        return out

    def round(self, index: int, address: str, stream: SiteStream, received: Received) -> None:
        """This round's share, from every kind of peer at once; returns when all is sent
        and every peer has its answer."""
        counts = split(self.quota(index), SHARES)
        frames = self.frames
        if frames is None:  # round 1: its frames' request is open; mutate them from round 2
            counts["site stream: hypothesis"] += counts.pop("site stream: mutated frames")
            frames = real_frames(HOSTILE, received)
        assert stream.welcome is not None
        n_hyp = sum(v for k, v in counts.items() if not k.startswith("site stream: m"))
        pool = hypothesis_bytes(hostile_messages(stream.welcome.job_id), n_hyp, 1000 * index)
        on_stream = [pool.pop() for _ in range(counts["site stream: hypothesis"])]
        on_stream += self._mutants(counts.get("site stream: mutated frames", 0), frames)
        self.rng.shuffle(on_stream)
        honest = split(counts["new stream, honest certs"], dict.fromkeys(HONEST, 1.0))
        jobs: list[tuple[str, Callable[[], Any]]] = [
            ("site stream", lambda: self._send_stream(stream, on_stream)),
            (
                "tcp: raw bytes",
                lambda: raw_connections(
                    "127.0.0.1",
                    int(address.rsplit(":", 1)[1]),
                    self._raw_payloads(counts["tcp: raw bytes"], pool),
                    HANDSHAKE_TIMEOUT_S + 5,
                ),
            ),
        ]
        for site, n in [(HOSTILE, counts["new stream, mallory's cert"]), *honest.items()]:
            firsts = self._firsts(n, site, pool, frames)
            creds = self.pki.creds(site)
            jobs.append((f"new stream: {site}", _bind(first_messages, address, creds, firsts)))
        for name, creds in (
            ("tls: no client cert", self.pki.no_client_cert()),
            ("tls: another CA's cert", self.pki.stranger_creds()),
        ):
            firsts = [pool.pop() if pool else b"\x00" for _ in range(counts[name])]
            jobs.append((name, _bind(tls_attempts, address, creds, firsts)))
        self._run(jobs)
        for k, v in counts.items():
            self.sent[k] += v
        self.frames = self.frames or frames

    def _send_stream(self, stream: SiteStream, messages: list[bytes]) -> None:
        for data in messages:
            stream.send(data)
        self.stream_sent += messages

    def _run(self, jobs: list[tuple[str, Callable[[], Any]]]) -> None:
        results: dict[str, Any] = {}

        def go(name: str, fn: Callable[[], Any]) -> None:
            try:
                results[name] = fn()
            except Exception as exc:  # a peer's own failure is reported, not hidden
                self.notes.append(f"{name}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=go, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, got in results.items():
            if isinstance(got, RawTally):
                for field in ("closed", "held", "unreachable", "answered_bytes"):
                    setattr(self.raw, field, getattr(self.raw, field) + getattr(got, field))
            elif isinstance(got, StreamTally):
                tally = self.streams.setdefault(name, StreamTally())
                tally.refused += got.refused
                tally.welcomed += got.welcomed
                tally.other += got.other
                self.notes += [f"{name}: {n}" for n in got.notes]

    # ---- figures -------------------------------------------------------------------------

    def answer(self, received: Received, data: bytes) -> None:
        """Note mallory's own answer to ``received``, about to go out on its stream after
        this round's hostile messages: whether the server takes or refuses it decides which
        chunks it drops quietly next (see ``expected_refusals``)."""
        self.answers[len(self.stream_sent)] = int(received.binding.round)
        self.stream_sent.append(data)

    def expected_stream_refusals(self, closed_by_hostile: set[int]) -> int:
        """Refusals the server should log on mallory's stream, given the rounds whose
        request a hostile reply closed before mallory's answer (that answer is then refused
        as a second reply; every other answer is taken)."""
        accepted = {i for i, r in self.answers.items() if r not in closed_by_hostile}
        return expected_refusals(self.stream_sent, accepted)

    def connection_refusals(self) -> dict[str, int]:
        out = {name: t.refused for name, t in sorted(self.streams.items())}
        out["tcp closed by the server"] = self.raw.closed
        return out

    def welcomed(self) -> int:
        return sum(t.welcomed for t in self.streams.values())
