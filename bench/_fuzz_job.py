"""The honest job of the fuzz benchmark (bench/_chaos_fuzz.py): a PKI made by consortia's
own key tools, a real ``consortia server`` and three ``consortia client`` processes, and
mallory's stream, which declines every request after the round's fuzzing (if any)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, Protocol

import grpc

from _fuzz_peers import Received, SiteStream
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.credentials import site_credentials
from consortia.security.pki import CA_CERT, add_site, init_pki, site_paths

BENCH = Path(__file__).resolve().parent
HONEST = ("site-a", "site-b", "site-c")
HOSTILE = "mallory"  # enrolled, connected, asked every round; declines (and fuzzes)
DECLINE = "mallory declines this round"
HEARTBEAT_S = 2.0
JOB = """\
name = "chaos-fuzz"
rounds = {rounds}
seed = 11

[task]
framework = "numpy"
app = "{app}"

[train]
local_epochs = 1
lr = 0.5

[strategy]
preset = "fedavgm"
sites_per_round = 4
min_sites = 4
min_replies = 3
deadline_s = 300
grace_s = 300
tolerate_failing_sites = true

[evaluation]
central_every = 1
"""


@dataclass(frozen=True)
class Pki:
    """The federation's CA folder, and a stranger's CA with a ``site-a`` of its own."""

    root: Path
    stranger: Path

    @classmethod
    def make(cls, root: Path, sites: list[str]) -> Pki:
        init_pki(root)
        for s in sites:
            add_site(root, s)
        stranger = init_pki(root.parent / "stranger-pki")
        add_site(stranger, "site-a")
        return cls(root, stranger)

    def site_dir(self, name: str) -> Path:
        return self.root / "sites" / name

    def creds(self, name: str) -> grpc.ChannelCredentials:
        return site_credentials(self.site_dir(name))

    def stranger_creds(self) -> grpc.ChannelCredentials:
        """The stranger's key and certificate, trusting the federation's server (so that
        the server, not the peer, is the one to refuse the handshake)."""
        paths = site_paths(self.stranger / "sites" / "site-a")
        return grpc.ssl_channel_credentials(
            root_certificates=(self.root / CA_CERT).read_bytes(),
            private_key=paths.key.read_bytes(),
            certificate_chain=paths.cert.read_bytes(),
        )

    def no_client_cert(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=(self.root / CA_CERT).read_bytes())


class RoundFuzzer(Protocol):
    def round(self, index: int, address: str, stream: SiteStream, received: Received) -> None: ...

    def answer(self, received: Received, data: bytes) -> None: ...


class Proc:
    """A ``consortia`` sub-command in its own process, its output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "consortia.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class JobRun:
    """What one run of the job left behind."""

    name: str
    server_rc: int | None
    server_log: str
    clients: dict[str, int | None]
    rows: dict[str, list[tuple[Any, ...]]]
    final_digest: str | None
    rounds_completed: int
    seconds: float
    # rounds where a hostile reply, not mallory's decline, closed mallory's request
    hostile_resolved: set[int]

    @property
    def crashed(self) -> bool:
        return self.server_rc != 0 or "Traceback" in self.server_log

    def log_count(self, text: str) -> int:
        return self.server_log.count(text)


def _metrics(text: str | None) -> str | None:
    """A round's metrics without its timings, and with the reason the hostile site failed
    replaced: the reference run's mallory declines, the fuzzed run's may instead be
    refused for a hostile reply it sent to its own request; either way it failed."""
    if text is None:
        return None
    m = json.loads(text)
    m = {k: v for k, v in m.items() if "seconds" not in k and not k.endswith("_s")}
    if HOSTILE in m.get("failed_sites", {}):
        m["failed_sites"][HOSTILE] = "failed"
    return json.dumps(m, sort_keys=True)


def store_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the store, less what differs between two runs of one job: the job's id
    and times, each round's duration and finishing time, and the text of the hostile
    site's own failures (its outcome, 'failed', is kept)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = db.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        job = db.execute(
            "SELECT name, job_digest, spec_digest, rounds, initial_checkpoint, initial_digest, "
            "initial_optimizer_digest, status FROM job"
        ).fetchall()
        rounds = [
            (*r[:-1], _metrics(r[-1]))
            for r in db.execute(
                "SELECT number, status, attempts, error, checkpoint, checkpoint_digest, "
                "optimizer_digest, model_digest, metrics FROM rounds ORDER BY number"
            )
        ]
        participants = [
            (rnd, site, phase, outcome, "failed" if site == HOSTILE else reason)
            for rnd, site, phase, outcome, reason in db.execute(
                "SELECT round, site, phase, outcome, reason FROM participants "
                "ORDER BY round, site, phase"
            )
        ]
    finally:
        db.close()
    return {"meta": meta, "job": job, "rounds": rounds, "participants": participants}


def _raw_reasons(path: Path) -> dict[int, str | None]:
    """Why mallory failed each round, by round, as recorded (``store_rows`` hides it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT round, reason FROM participants WHERE site = ?", (HOSTILE,))
        return {int(n): r for n, r in rows}
    finally:
        db.close()


def _decline(received: Received) -> bytes:
    reply = codec.error_reply(received.binding, DECLINE)
    return pb.SiteMessage(reply=reply).SerializeToString()


def _serve_mallory(
    server: Proc, stream: SiteStream, address: str, fuzzer: RoundFuzzer | None
) -> None:
    """Answer every request mallory gets (after fuzzing, if any) until the job ends."""
    index = 0
    while True:
        try:
            received = stream.requests.get(timeout=0.2)
        except Empty:
            if stream.job_end.is_set() or server.popen.poll() is not None:
                return
            continue
        decline = _decline(received)
        if fuzzer is not None:
            fuzzer.round(index, address, stream, received)
            fuzzer.answer(received, decline)
        index += 1
        stream.send(decline)


def run_job(out: Path, pki: Pki, rounds: int, fuzzer: RoundFuzzer | None) -> JobRun:
    """Run the job to its end (fuzzing each round when ``fuzzer`` is given)."""
    out.mkdir(parents=True)
    job = out / "job.toml"
    job.write_text(JOB.format(rounds=rounds, app=BENCH / "_chaos_app.py"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    run_dir = out / "run"
    t0 = time.perf_counter()
    server = Proc(
        ["server", str(job), "--address", address, "--pki", str(pki.root), "--out",
         str(run_dir), "--heartbeat", str(HEARTBEAT_S), "--min-sites", "4"],
        out / "server.log",
    )  # fmt: skip
    procs = [server]
    stream: SiteStream | None = None
    try:
        _wait_for(lambda: "listening on" in server.output(), 60, "the server to listen")
        stream = SiteStream(address, pki.creds(HOSTILE), HEARTBEAT_S / 2)
        clients = {}
        for s in HONEST:
            clients[s] = Proc(
                ["client", "--server", address, "--site", s, "--pki", str(pki.site_dir(s)),
                 "--app", f"{BENCH / '_chaos_app.py'}:make_site", "--heartbeat", "1",
                 "--max-backoff", "0.3"],
                out / f"{s}.log",
            )  # fmt: skip
            procs.append(clients[s])
        _serve_mallory(server, stream, address, fuzzer)
        server_rc = server.wait(120)
        codes = {s: p.wait(60) for s, p in clients.items()}
    finally:
        if stream is not None:
            stream.close()
        for p in procs:
            p.kill()
    seconds = time.perf_counter() - t0
    rows = store_rows(run_dir / "state.sqlite")
    reasons = _raw_reasons(run_dir / "state.sqlite")
    done = [r for r in rows["rounds"] if r[1] == "completed"]
    return JobRun(
        out.name,
        server_rc,
        server.output(),
        codes,
        rows,
        done[-1][7] if len(done) == rounds else None,
        len(done),
        seconds,
        {n for n, r in reasons.items() if DECLINE not in (r or "")},
    )
