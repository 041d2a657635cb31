"""Load part of ``bench/chaos.py``: can one ``consortia server`` hold N connected sites and
run rounds across all of them?

One load-generator process (this file with ``--generate``) opens N concurrent mutual-TLS
site connections on one asyncio loop, each with its own enrolled certificate. Every
connection speaks the real protocol (hello, heartbeats, chunked requests and replies) and
answers each round with the update of a small site app (``_chaos_app``). The driver starts a
real ``consortia server`` process that waits for all N sites before each round, samples its
memory while the job runs, and reads back:

- rounds completed, and the median round time from the server's metrics.jsonl;
- the server's resident memory: once all N sites are connected (before round 1) and its
  peak over the job;
- refusals: connections the server refused (counted by the generator) and refusal lines in
  the server's log;
- how long it took for all N sites to be connected.

Why one process for the sites rather than N ``consortia client`` processes: a thousand Python
interpreters would need ~40 GiB on this machine; an asyncio loop holds a thousand streams
in a few hundred MiB, and the server cannot tell the difference on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _chaos_app import make_site  # noqa: E402
from consortia.client.signing import attach_deployed  # noqa: E402
from consortia.core.messages import decode, encode  # noqa: E402
from consortia.fleet.grpc import codec  # noqa: E402
from consortia.fleet.grpc import federation_pb2 as pb  # noqa: E402
from consortia.fleet.grpc.client import connect_method  # noqa: E402
from consortia.fleet.grpc.credentials import site_credentials  # noqa: E402
from consortia.security.pki import add_site, init_pki  # noqa: E402

MIB = 2**20
CHUNK_BYTES = 64 * 2**10
SITE_PREFIX = "load-"

JOB = """\
# Chaos load benchmark: every round asks all {n} sites.
name = "chaos-load"
rounds = {rounds}
seed = 1

[task]
framework = "numpy"
app = "{app}"

[train]
local_epochs = 1
lr = 0.5

[strategy]
preset = "fedavg"
sites_per_round = {n}
min_sites = {n}
min_replies = {n}
deadline_s = {deadline}

[evaluation]
central_every = 1
"""


def site_name(i: int) -> str:
    return f"{SITE_PREFIX}{i:04d}"


def make_pki(directory: Path, n: int) -> Path:
    """A federation with ``n`` enrolled sites (in process: a thousand ``consortia keys``
    processes would spend minutes starting interpreters)."""
    d = init_pki(directory)
    for i in range(n):
        add_site(d, site_name(i))
    return d


# ---- the load generator: N sites on one event loop -----------------------------------


@dataclass
class SwarmStats:
    """What the generator saw; written as JSON for the driver."""

    sites: int
    welcomed: int = 0
    connected_peak: int = 0
    all_connected_s: float | None = None
    refusals: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    replies: int = 0
    jobs_ended: int = 0
    cpu_s: float = 0.0
    _connected: int = 0

    def refused(self, code: str) -> None:
        self.refusals[code] = self.refusals.get(code, 0) + 1


class _LoadSite:
    """One site's connection: the same messages ``consortia client`` sends, on asyncio."""

    def __init__(self, name: str, site_dir: Path, address: str, stats: SwarmStats) -> None:
        self.name = name
        self.site = make_site(name)
        # As `consortia client` does: sign each update with the certificate's key (the
        # server refuses unsigned ones) and keep the server's receipts.
        attach_deployed(self.site, site_dir, None)
        self.credentials = site_credentials(site_dir)
        self.address = address
        self.stats = stats
        self.job_id = ""
        self.done = False

    async def run(self, heartbeat_s: float, t0: float) -> None:
        """Connect, and reconnect after a refusal, until the server ends the job."""
        while not self.done:
            try:
                await self._serve(heartbeat_s, t0)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                self.stats.refused(getattr(code, "name", str(code)))
                await asyncio.sleep(0.5)

    async def _serve(self, heartbeat_s: float, t0: float) -> None:
        options = [("grpc.max_receive_message_length", CHUNK_BYTES + codec.MESSAGE_OVERHEAD_BYTES)]
        async with grpc.aio.secure_channel(self.address, self.credentials, options) as channel:
            call = connect_method(channel)()
            lock = asyncio.Lock()

            async def send(message: object) -> None:
                async with lock:
                    await call.write(message)

            hello = pb.Hello(
                site_name=self.name,
                protocol_version=codec.PROTOCOL_VERSION,
                max_chunk_bytes=CHUNK_BYTES,
            )
            await send(pb.SiteMessage(hello=hello))
            beats = asyncio.create_task(self._heartbeats(send, heartbeat_s))
            try:
                await self._read(call, send, t0)
            finally:
                beats.cancel()
                if self.job_id:
                    self.stats._connected -= 1

    async def _heartbeats(self, send: Any, heartbeat_s: float) -> None:
        n = 0
        while True:
            await asyncio.sleep(heartbeat_s)
            n += 1
            await send(pb.SiteMessage(heartbeat=pb.Heartbeat(sequence=n)))

    async def _read(self, call: Any, send: Any, t0: float) -> None:
        current: tuple[pb.Request, codec.PayloadAssembler] | None = None
        while (msg := await call.read()) is not grpc.aio.EOF:
            if isinstance(msg, codec.ChunkFrame):
                if current is not None and current[1].add(msg):
                    await self._answer(send, *current)
                    current = None
                continue
            kind = msg.WhichOneof("kind")
            if kind == "welcome":
                self._welcomed(msg.welcome.job_id, t0)
            elif kind == "request":
                self.stats.requests += 1
                req = msg.request
                b = req.binding
                asm = codec.PayloadAssembler(
                    b.kind, int(b.round), req.payload, b.request_id, CHUNK_BYTES, 2**30
                )
                if asm.complete:
                    await self._answer(send, req, asm)
                else:
                    current = (req, asm)
            elif kind == "job_end":
                self.stats.jobs_ended += 1
                self.done = True
                call.cancel()
                return

    def _welcomed(self, job_id: str, t0: float) -> None:
        self.job_id = job_id
        s = self.stats
        s.welcomed += 1
        s._connected += 1
        s.connected_peak = max(s.connected_peak, s._connected)
        if s._connected == s.sites and s.all_connected_s is None:
            s.all_connected_s = round(time.monotonic() - t0, 2)

    async def _answer(self, send: Any, req: pb.Request, asm: codec.PayloadAssembler) -> None:
        payload = encode(self.site.handle(decode(asm.result(), reply=False)))
        body, arrays = codec.payload_to_pb(payload, CHUNK_BYTES)
        rid = req.binding.request_id
        await send(pb.SiteMessage(reply=pb.Reply(binding=req.binding, payload=body)))
        for frame in codec.iter_payload_frames(arrays, rid, CHUNK_BYTES):
            await send(frame)
        self.stats.replies += 1


async def _swarm(address: str, pki: Path, n: int, heartbeat_s: float, stats_path: Path) -> None:
    stats = SwarmStats(sites=n)
    sites = [
        _LoadSite(site_name(i), pki / "sites" / site_name(i), address, stats) for i in range(n)
    ]
    t0 = time.monotonic()

    async def staggered(i: int, s: _LoadSite) -> None:
        await asyncio.sleep(i * 0.002)  # sites do not all dial in the same millisecond
        await s.run(heartbeat_s, t0)

    async def report() -> None:
        while True:
            stats_path.write_text(json.dumps(_public(stats)))
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(staggered(i, s) for i, s in enumerate(sites)))
    reporter.cancel()
    stats.cpu_s = round(time.process_time(), 2)
    stats_path.write_text(json.dumps(_public(stats)))


def _public(stats: SwarmStats) -> dict[str, Any]:
    return {k: v for k, v in asdict(stats).items() if not k.startswith("_")}


# ---- the driver ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    sites: int
    rounds: int
    rounds_completed: int
    round_s_median: float | None
    all_connected_s: float | None
    server_rss_connected_mib: float | None
    server_rss_peak_mib: float
    server_cpu_s: float
    generator_cpu_s: float | None
    connection_refusals: int
    refusal_lines_in_server_log: int
    server_exit: int
    wall_s: float


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.latest = 0
        self.cpu_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                rss = self.proc.memory_info().rss
                cpu = self.proc.cpu_times()
            except psutil.Error:
                return
            if rss:  # an exited, unreaped process reads as 0
                self.cpu_s = cpu.user + cpu.system
                self.latest = rss
                self.peak = max(self.peak, rss)


def _completed_rounds_seconds(out: Path) -> list[float]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["seconds"]) for r in rows if "seconds" in r]


def run_load(n: int, rounds: int, pki: Path, work: Path, heartbeat_s: float) -> LoadResult:
    """One server and one generator for ``n`` sites; the job's rounds ask every site."""
    job_dir = work / f"job-{n}"
    job_dir.mkdir(parents=True)
    (job_dir / "job.toml").write_text(
        JOB.format(n=n, rounds=rounds, app=HERE / "_chaos_app.py", deadline=max(60, n // 5))
    )
    with socket_port() as port:
        address = f"127.0.0.1:{port}"
    out, stats_path = job_dir / "run", job_dir / "swarm.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    t0 = time.monotonic()
    server_log = (job_dir / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "consortia.cli", "server", str(job_dir / "job.toml"),
         "--address", address, "--pki", str(pki), "--out", str(out),
         "--heartbeat", str(heartbeat_s), "--min-sites", str(n), "--max-sites", str(n)],
        stdout=server_log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    sampler = _RssSampler(server.pid)
    sampler.start()
    _wait_for_listener(port, server)
    generator = subprocess.Popen(
        [sys.executable, __file__, "--generate", "--address", address, "--pki", str(pki),
         "--sites", str(n), "--heartbeat", str(heartbeat_s), "--stats", str(stats_path)],
        stdout=(job_dir / "generator.log").open("wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    rss_connected = None
    try:
        while server.poll() is None:
            time.sleep(0.2)
            if rss_connected is None and _all_connected(stats_path, n):
                rss_connected = sampler.latest
        code = server.wait()
        generator.wait(60)
    finally:
        for p in (server, generator):
            if p.poll() is None:
                p.kill()
                p.wait(10)
        sampler.stop.set()
        server_log.close()
    wall = time.monotonic() - t0
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    seconds = _completed_rounds_seconds(out)
    log = (job_dir / "server.log").read_text(errors="replace")
    return LoadResult(
        sites=n,
        rounds=rounds,
        rounds_completed=len(seconds),
        round_s_median=round(statistics.median(seconds), 3) if seconds else None,
        all_connected_s=stats.get("all_connected_s"),
        server_rss_connected_mib=None if rss_connected is None else round(rss_connected / MIB, 1),
        server_rss_peak_mib=round(sampler.peak / MIB, 1),
        server_cpu_s=round(sampler.cpu_s, 1),
        generator_cpu_s=stats.get("cpu_s"),
        connection_refusals=sum(stats.get("refusals", {}).values()),
        refusal_lines_in_server_log=len(re.findall(r"refus", log, re.IGNORECASE)),
        server_exit=code,
        wall_s=round(wall, 1),
    )


def _wait_for_listener(port: int, server: subprocess.Popen[bytes]) -> None:
    """Start the sites once the server accepts connections, so that a refusal counted by
    the generator is the server saying no, not a port that is not open yet."""
    import socket

    end = time.monotonic() + 60
    while time.monotonic() < end and server.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server never listened on port {port}")


def _all_connected(stats_path: Path, n: int) -> bool:
    try:
        return json.loads(stats_path.read_text()).get("all_connected_s") is not None
    except (OSError, ValueError):
        return False


class socket_port:
    """A free loopback port (bound and released; the server binds it right after)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _table(results: list[LoadResult]) -> str:
    head = (
        f"{'sites':>6} {'rounds':>7} {'round s':>8} {'connect s':>9} "
        f"{'RSS conn MiB':>12} {'RSS peak MiB':>12} {'server CPU s':>12} {'sites CPU s':>11} "
        f"{'refused':>8} {'exit':>5}"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r.sites:>6} {r.rounds_completed:>3}/{r.rounds:<3} "
            f"{r.round_s_median if r.round_s_median is not None else '-':>8} "
            f"{r.all_connected_s if r.all_connected_s is not None else '-':>9} "
            f"{r.server_rss_connected_mib if r.server_rss_connected_mib is not None else '-':>12} "
            f"{r.server_rss_peak_mib:>12} {r.server_cpu_s:>12} {r.generator_cpu_s or '-':>11} "
            f"{r.connection_refusals:>8} {r.server_exit:>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", default="100,500,1000", help="comma-separated site counts")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 sites, 2 rounds")
    p.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.generate:
        asyncio.run(_swarm(args.address, args.pki, int(args.sites), args.heartbeat, args.stats))
        return 0
    counts = [20] if args.quick else [int(x) for x in args.sites.split(",")]
    rounds = 2 if args.quick else args.rounds
    results = []
    with tempfile.TemporaryDirectory(prefix="chaos-load-") as tmp:
        t = time.monotonic()
        pki = make_pki(Path(tmp) / "pki", max(counts))
        print(f"enrolled {max(counts)} sites in {time.monotonic() - t:.1f} s", flush=True)
        for n in counts:
            results.append(run_load(n, rounds, pki, Path(tmp), args.heartbeat))
            print(_table(results[-1:]).splitlines()[-1], flush=True)
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    ok = all(r.rounds_completed == r.rounds and r.server_exit == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
