"""grpc_round: a real round over gRPC + mutual TLS on loopback, against a plain socket.

Usage: ``python bench/grpc_round.py [--sites 10] [--params 10_000_000] [--rounds 5]
[--reps 3] [--chunk-mib 2] [--big-gib 1] [--skip-big] [--glibc-defaults]``.

Part 1 runs two federations side by side, each of ``--sites`` site processes (``run_site``,
each with its own certificate) and a server in this process, through the real round steps
(the standard ``Workflow`` over ``GrpcFleet``, FedAvg) with a ``--params`` float32 model.
Local training is a NumPy add (the sites report how long it took), so a round is almost
all transport. In one federation the sites sign every update, as ``consortia client``
does (SHA-256 of the update, then an ECDSA signature); in the other they do not, so its
round is the transfer alone, which is what issue 7's target is about (and what its
starting figure, 2.76 x, measured: sites did not sign then). The server keeps no ledger
here, so nothing checks the signatures. Beside them, the same number of processes move
the same bytes (model down, update up, every site at once) over plain loopback TCP
sockets, and as many again over loopback TLS sockets with the federation's certificates:
the raw transfer times. After warming up (two gRPC rounds per federation, one transfer
each), they alternate step by step, ``--rounds`` times per rep: a round of one federation,
a TLS transfer, a round of the other (which federation goes first alternates), then a
plain transfer. So every round has a TLS transfer measured right beside it; on a shared
machine whose speed drifts over minutes, the ratio of such neighbours is the steadier
figure. Both it (the median of the per-round ratios) and the ratio of the two medians are
printed. Bytes on the wire are the loopback interface's counters (``/proc/net/dev``, IP
packets included) during each gRPC round. Targets: bytes per site per round <= 1.05 x
(model down + update up) (issue 3); the transfer (the unsigned round beyond local
training) <= 1.5 x the raw TLS transfer time (issue 7).

Part 2 moves a ``--big-gib`` GiB model to one site and its update back (one fit round
trip through ``GrpcFleet``), with both ends in fresh processes, and reports the time and
each end's peak RSS next to what the arrays alone need.

Every process (ours and the raw transfers' alike) first calls ``keep_freed_memory``, as
``consortia server`` and ``consortia client`` do; ``--glibc-defaults`` leaves glibc's
allocator as it is, to see what that call is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from consortia.client.runtime import Site, SiteData
from consortia.core.memory import keep_freed_memory, peak_rss_bytes
from consortia.core.messages import FitIns, TrainSettings
from consortia.core.spec import ModelSpec
from consortia.fleet.base import Reply, Timing
from consortia.fleet.grpc import GrpcFleet, run_site
from consortia.fleet.grpc.codec import DEFAULT_CHUNK_BYTES
from consortia.security.pki import add_site, init_pki
from consortia.server.workflow import LoopSettings, Workflow, standard_steps
from consortia.strategy.presets import make_strategy
from consortia.strategy.selection import UniformSelection

MIB = 2**20


class AddTrainer:
    """'Training' that adds a small constant: the cost of a round is then the transport."""

    returns_fresh_vectors = True  # fit returns a new array, as the built-in trainers do

    def __init__(self, size: int) -> None:
        self.size = size

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        w = np.zeros(self.size, np.float32)
        return ModelSpec.from_arrays({"w": w}), w

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        out = weights + np.float32(1e-3)
        return out, {"train_s": time.perf_counter() - t0}

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        return {"loss": 0.0}


def _site(name: str, size: int) -> Site:
    return Site(name, AddTrainer(size), SiteData(np.zeros((1, 1)), np.zeros(1)))


class Unsigned:
    """A bare site handler around a ``Site``. ``run_site`` gives its signing stage only to
    a ``SiteApp``, so this site's updates go unsigned and its round is the transfer alone:
    what the 2.76 x of issue 7 measured, before sites signed their updates."""

    def __init__(self, site: Site) -> None:
        self.site_id = site.site_id
        self._site = site

    def handle(self, message: Any) -> Any:
        return self._site.handle(message)


def lo_bytes() -> int:
    """Received bytes of the loopback interface (every packet, headers included)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def peak_rss_mib() -> float:
    """This process's own peak (``VmHWM``). Not ``ru_maxrss``: Linux carries the parent's
    high-water mark over into a child it spawns, so every child here reported at least the
    benchmark's own peak (a child of a 500 MB parent: 501 MiB against 51 MiB measured)."""
    peak = peak_rss_bytes()
    assert peak is not None, "no VmHWM in /proc/self/status"
    return peak / MIB


# ---- child roles ------------------------------------------------------------------------


def role_site(args: argparse.Namespace) -> None:
    stop = threading.Event()

    def stop_at_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_at_eof, daemon=True).start()
    site = _site(args.name, args.params)
    run_site(
        args.address,
        Unsigned(site) if args.unsigned else site,
        Path(args.pki) / "sites" / args.name,
        stop=stop,
        chunk_bytes=args.chunk_mib * MIB,
        max_model_bytes=16 * 2**30,
    )
    print(f"peak_rss_mib {peak_rss_mib():.1f}", flush=True)


def role_raw_site(args: argparse.Namespace) -> None:
    """Plain TCP (or TLS with --pki): per round, receive the model, send back an update of
    the same size; until the server closes the connection."""
    nbytes = args.params * 4
    buf = bytearray(nbytes)
    view = memoryview(buf)
    with socket.create_connection(("127.0.0.1", args.port)) as plain:
        s = plain
        if args.pki:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(str(Path(args.pki) / "ca.pem"))
            s = ctx.wrap_socket(plain, server_hostname="localhost")
        while True:
            got = 0
            while got < nbytes:
                n = s.recv_into(view[got:], nbytes - got)
                if n == 0:
                    return
                got += n
            s.sendall(view)


def role_big_server(args: argparse.Namespace) -> None:
    size = int(args.big_gib * 2**30) // 4
    fleet = GrpcFleet(
        f"127.0.0.1:{args.port}", job_id="big", pki_dir=args.pki, chunk_bytes=args.chunk_mib * MIB
    )
    try:
        fleet.wait_for_sites(1, timeout=120)
        base = peak_rss_mib()
        w = np.full(size, 0.5, np.float32)
        t0 = time.perf_counter()
        (out,) = list(fleet.send([("site-0", FitIns(1, w, TrainSettings(), 0))], Timing(3600)))
        seconds = time.perf_counter() - t0
        assert isinstance(out, Reply), out
        assert out.message.delta.shape == (size,) and float(out.message.delta[-1]) > 0
        print(f"seconds {seconds:.3f}", flush=True)
        print(f"base_rss_mib {base:.1f}", flush=True)
        print(f"peak_rss_mib {peak_rss_mib():.1f}", flush=True)
    finally:
        fleet.close()


# ---- parent -----------------------------------------------------------------------------


_CHILD_FLAGS: list[str] = []  # what every child process inherits (--glibc-defaults)


def _child(role: str, *extra: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *_CHILD_FLAGS, *extra],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )


def _stop_sites(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()  # EOF: the site stops and prints its peak RSS
    for p in procs:
        assert p.stdout is not None
        outs.append(p.stdout.read())
        p.wait(60)
    return outs


class GrpcFederation:
    """The server (this process) and ``args.sites`` site processes, one round at a time."""

    def __init__(self, args: argparse.Namespace, pki: Path, signed: bool) -> None:
        self.sites = args.sites
        self.fleet = GrpcFleet(
            "127.0.0.1:0",
            job_id="bench",
            pki_dir=pki,
            chunk_bytes=args.chunk_mib * MIB,
            max_sites=args.sites + 4,
        )
        common = ["--pki", str(pki), "--params", str(args.params)]
        common += ["--chunk-mib", str(args.chunk_mib), *([] if signed else ["--unsigned"])]
        self.procs = [
            _child(
                "site", "--address", self.fleet.address, "--name", f"site-{i}", *common, stdin=True
            )
            for i in range(args.sites)
        ]
        self.fleet.wait_for_sites(args.sites, timeout=120)
        spec, w = AddTrainer(args.params).initial()
        strategy = make_strategy(
            "fedavg", selection=UniformSelection(count=args.sites), train=TrainSettings()
        )
        settings = LoopSettings(
            rounds=10**6, min_fit_replies=args.sites, central_every=0, grace_s=None
        )
        self.workflow = Workflow(spec, standard_steps(strategy, settings), settings)
        self.state = self.workflow.initial_state(w)
        # Warm-up: connections, then allocations. Two rounds, because the receive buffers
        # of one round are still referenced (the model in the loop state, the sites'
        # deltas) while the next round's arrive: only from the third round on does every
        # message land in a buffer that an earlier round left (profiled: the first timed
        # round cost twice the CPU of the later ones).
        self.round()
        self.round()

    def round(self) -> tuple[float, float, float]:
        """One round: its seconds, the sites' median training seconds, bytes per site."""
        before = lo_bytes()
        self.state, record = self.workflow.run_round(self.state, self.fleet)
        wire = (lo_bytes() - before) / self.sites
        assert record.replies == self.sites, record
        return record.seconds, record.metrics["train_train_s"], wire

    def close(self) -> list[float]:
        """Stop the sites; their peak RSS in MiB."""
        try:
            return [float(o.split()[-1]) for o in _stop_sites(self.procs) if o.strip()]
        finally:
            self.fleet.close()


class RawTransfers:
    """The same bytes over loopback TCP: every site at once, down then up. With ``pki``,
    over TLS with the federation's server certificate: the floor any TLS transport has."""

    def __init__(self, args: argparse.Namespace, pki: Path | None = None) -> None:
        self.sites, self.nbytes = args.sites, args.params * 4
        self.model = np.full(args.params, 0.5, np.float32).view(np.uint8).data
        self.srv = socket.create_server(("127.0.0.1", 0), backlog=args.sites)
        port = self.srv.getsockname()[1]
        tls = ["--pki", str(pki)] if pki else []
        self.procs = [
            _child("raw-site", "--port", str(port), "--params", str(args.params), *tls)
            for _ in range(args.sites)
        ]
        conns: list[socket.socket] = [self.srv.accept()[0] for _ in range(args.sites)]
        if pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
            conns = [ctx.wrap_socket(c, server_side=True) for c in conns]
        self.conns = conns
        self.bufs = [bytearray(self.nbytes) for _ in conns]
        self.transfer()  # warm-up

    def _one(self, c: socket.socket, buf: bytearray) -> None:
        c.sendall(self.model)
        view, got = memoryview(buf), 0
        while got < self.nbytes:
            got += c.recv_into(view[got:], self.nbytes - got)

    def transfer(self) -> tuple[float, float]:
        """One round's bytes: seconds, and bytes per site on the wire."""
        before, t0 = lo_bytes(), time.perf_counter()
        threads = [
            threading.Thread(target=self._one, args=cb)
            for cb in zip(self.conns, self.bufs, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, (lo_bytes() - before) / self.sites

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.srv.close()
        for p in self.procs:
            p.wait(30)


def paired_rounds(args: argparse.Namespace, pki: Path) -> dict[str, list[float]]:
    """One rep: gRPC rounds of unsigned and of signing sites, TLS and plain transfers,
    alternating step by step (all four sets of processes stay up; those not moving bytes
    sit idle). The TLS transfer of a step sits between its two gRPC rounds, whose order
    alternates, so that each round has a TLS transfer measured right beside it."""
    out: dict[str, list[float]] = {}

    def note(**figures: float) -> None:
        for k, v in figures.items():
            out.setdefault(k, []).append(v)

    with contextlib.ExitStack() as stack:
        feds: dict[str, GrpcFederation] = {}

        def stop(kind: str) -> None:
            out.setdefault(f"{kind}_site_peak_rss_mib", []).extend(feds[kind].close())

        for kind in ("unsigned", "signed"):
            feds[kind] = GrpcFederation(args, pki, signed=kind == "signed")
            stack.callback(stop, kind)
        tls = RawTransfers(args, pki)
        stack.callback(tls.close)
        plain = RawTransfers(args)
        stack.callback(plain.close)
        for i in range(args.rounds):
            first, second = ("unsigned", "signed") if i % 2 == 0 else ("signed", "unsigned")
            rounds = {first: feds[first].round()}
            tls_s, _ = tls.transfer()
            rounds[second] = feds[second].round()
            plain_s, plain_wire = plain.transfer()
            note(tls_s=tls_s, plain_s=plain_s, plain_wire_bytes_per_site=plain_wire)
            for kind, (round_s, train_s, wire) in rounds.items():
                note(**{f"{kind}_round_s": round_s, f"{kind}_train_s": train_s})
                note(**{f"{kind}_wire_bytes_per_site": wire})
                note(**{f"{kind}_paired_ratio": (round_s - train_s) / tls_s})
    out["server_rss_mib"] = [psutil.Process().memory_info().rss / MIB]  # this process
    return out


def big_transfer(args: argparse.Namespace, pki: Path) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    size = int(args.big_gib * 2**30) // 4
    common = ["--pki", str(pki), "--chunk-mib", str(args.chunk_mib)]
    server = _child("big-server", "--port", str(port), "--big-gib", str(args.big_gib), *common)
    site = _child(
        "site",
        "--address",
        f"127.0.0.1:{port}",
        "--name",
        "site-0",
        "--params",
        str(size),
        *common,
        stdin=True,
    )
    out, _ = server.communicate(timeout=1800)
    (site_out,) = _stop_sites([site])
    vals = dict(line.split() for line in out.splitlines() if line.strip())
    return {
        "seconds": float(vals["seconds"]),
        "server_base_rss_mib": float(vals["base_rss_mib"]),
        "server_peak_rss_mib": float(vals["peak_rss_mib"]),
        "site_peak_rss_mib": float(site_out.split()[-1]),
        "model_mib": size * 4 / MIB,
    }


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def beyond_training(runs: dict[str, list[float]], kind: str) -> list[float]:
    rounds, train = runs[f"{kind}_round_s"], runs[f"{kind}_train_s"]
    return [r - t for r, t in zip(rounds, train, strict=True)]


def report_rounds(
    runs: dict[str, list[float]], kind: str, what: str, raw_s: float, tls_s: float, target: bool
) -> None:
    rounds, train = runs[f"{kind}_round_s"], runs[f"{kind}_train_s"]
    beyond = _med(beyond_training(runs, kind))
    paired = runs[f"{kind}_paired_ratio"]
    print(f"  gRPC + mTLS round, Workflow: {what}")
    print(
        f"    round                           median {_med(rounds):.3f} s "
        f"(local training {_med(train) * 1e3:.1f} ms)"
    )
    print(f"    beyond training / raw TCP       {beyond / raw_s:.2f} x")
    print(f"    beyond training / raw TLS       {beyond / tls_s:.2f} x   (ratio of the medians)")
    print(
        f"      round by round, each against the TLS transfer beside it: median "
        f"{_med(paired):.2f} x, range {min(paired):.2f}-{max(paired):.2f} x"
        + ("   (target <= 1.5)" if target else "")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", default="main")
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--params", type=int, default=10_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--chunk-mib", type=int, default=DEFAULT_CHUNK_BYTES // MIB)
    p.add_argument("--big-gib", type=float, default=1.0)
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--glibc-defaults", action="store_true", help="do not call keep_freed_memory()")
    p.add_argument("--address", help=argparse.SUPPRESS)  # child processes only
    p.add_argument("--pki", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--unsigned", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.glibc_defaults:
        _CHILD_FLAGS.append("--glibc-defaults")
    else:
        keep_freed_memory()
    roles = {"site": role_site, "raw-site": role_raw_site, "big-server": role_big_server}
    if args.role in roles:
        roles[args.role](args)
        return

    payload = 2 * args.params * 4  # model down + update up, per site per round
    print(
        f"grpc_round: {args.sites} sites, {args.params:,} float32 parameters "
        f"({args.params * 4 / MIB:.1f} MiB), chunks of {args.chunk_mib} MiB, "
        f"{args.reps} x {args.rounds} rounds, {os.cpu_count()} CPUs, "
        f"glibc malloc {'defaults' if args.glibc_defaults else 'as consortia server/client'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(Path(tmp) / "pki")
        for i in range(args.sites):
            add_site(pki, f"site-{i}")
        runs: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for k, v in paired_rounds(args, pki).items():
                runs.setdefault(k, []).extend(v)
        raw_s, tls_s = _med(runs["plain_s"]), _med(runs["tls_s"])
        print(f"  raw loopback TCP, same bytes      median {raw_s:.3f} s")
        print(
            f"  raw loopback TLS, same bytes      median {tls_s:.3f} s ({tls_s / raw_s:.2f} x TCP)"
        )
        for kind, what in (
            ("unsigned", "the transfer: sites that do not sign their updates"),
            ("signed", "sites that sign their updates, as consortia client does"),
        ):
            report_rounds(runs, kind, what, raw_s, tls_s, kind == "unsigned")
        beyond = {k: beyond_training(runs, k) for k in ("signed", "unsigned")}
        cost = [s - u for s, u in zip(beyond["signed"], beyond["unsigned"], strict=True)]
        print(
            f"  signing (SHA-256 of each update, then ECDSA) adds {_med(cost):.3f} s to a round "
            "beyond training (median of the steps' differences); the server here keeps no "
            "ledger, so nothing checks the signatures (a deployed server hashes every update "
            "again to do so)"
        )
        wire, raw_wire = (
            _med(runs["signed_wire_bytes_per_site"]),
            _med(runs["plain_wire_bytes_per_site"]),
        )
        print(
            f"  bytes per site per round          {wire / MIB:.2f} MiB on the wire = "
            f"{wire / payload:.4f} x payload {payload / MIB:.2f} MiB   (target <= 1.05)"
        )
        print(
            f"  raw socket bytes per site         {raw_wire / MIB:.2f} MiB = "
            f"{raw_wire / payload:.4f} x payload"
        )
        rss = {k: _med(runs[f"{k}_site_peak_rss_mib"]) for k in ("signed", "unsigned")}
        print(
            f"  site process peak RSS             median {rss['signed']:.0f} MiB "
            f"(unsigned: {rss['unsigned']:.0f} MiB)"
        )
        print(
            f"  server process RSS after a rep    {max(runs['server_rss_mib']):.0f} MiB at most "
            "(both federations' server end, and the raw transfers')"
        )
        if not args.skip_big:
            big = big_transfer(args, pki)
            gib = big["model_mib"] / 1024
            print(
                f"  {gib:.2f} GiB model, one site: down + up in {big['seconds']:.2f} s "
                f"({2 * big['model_mib'] / big['seconds']:.0f} MiB/s)"
            )
            print(
                f"    server peak RSS {big['server_peak_rss_mib']:.0f} MiB (before the model "
                f"{big['server_base_rss_mib']:.0f} MiB; model + received update "
                f"{2 * big['model_mib']:.0f} MiB)"
            )
            print(
                f"    site peak RSS   {big['site_peak_rss_mib']:.0f} MiB (received model + "
                f"trained model + delta {3 * big['model_mib']:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
