"""``consortia server JOB``: run a job's rounds for real sites that connect over gRPC.

consortia server JOB --address HOST:PORT --pki DIR --out DIR [--resume] [--insecure]
                     [--min-sites N] [--rounds N]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.text import Text


class ConsoleReporter:
    """Connected sites and round progress on the terminal, one line per event (readable
    in a log file as well as live). Site names, reasons and metric values come from sites:
    they are printed as text, never interpreted as console markup."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def _say(self, style: str, head: str, rest: str = "") -> None:
        line = Text(head, style=style)
        line.append(rest)
        self.console.print(line)

    def __call__(self, event: Any) -> None:
        from consortia.core.events import (
            RoundDone,
            RoundFailed,
            RoundStarted,
            RunStarted,
            WaitingForSites,
        )

        if isinstance(event, RunStarted) and event.start_round > 0:
            self._say(
                "bold",
                f"resuming job {event.job}",
                f" after round {event.start_round} of {event.rounds} (from {event.run_dir})",
            )
        elif isinstance(event, WaitingForSites):
            names = ", ".join(event.connected) or "none"
            self._say(
                "yellow",
                "waiting for sites",
                f": {len(event.connected)} of {event.needed} connected ({names})",
            )
        elif isinstance(event, RoundStarted):
            self._say(
                "bold",
                f"round {event.round}/{event.rounds}",
                f" starting; {len(event.connected)} sites connected: " + ", ".join(event.connected),
            )
        elif isinstance(event, RoundDone):
            record = event.record
            m = record.metrics
            acc = m.get("accuracy", m.get("federated_accuracy"))
            shown = f", accuracy {acc:.4f}" if isinstance(acc, float) else ""
            failed = f", {len(record.failures)} failed" if record.failures else ""
            self._say(
                "green",
                f"round {record.round}/{event.rounds} done",
                f" in {record.seconds:.2f} s: {record.replies}/{record.sites} replies"
                f"{failed}{shown}",
            )
            for f in record.failures:
                self._say("red", f"  {f.site}", f": {f.reason}")
        elif isinstance(event, RoundFailed):
            again = "; trying again" if event.retrying else ""
            self._say(
                "red",
                f"round {event.round} failed",
                f" (attempt {event.attempt}): {event.error}{again}",
            )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run a job's rounds for sites connecting over gRPC")
    p.add_argument("job", type=Path, help="job file (TOML); its [simulation] section is unused")
    p.add_argument("--address", default="127.0.0.1:8443", help="HOST:PORT to listen on")
    p.add_argument("--pki", type=Path, help="PKI folder made by `consortia keys init`")
    p.add_argument("--out", type=Path, required=True, help="run folder (state, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue the job recorded in --out")
    p.add_argument(
        "--insecure", action="store_true", help="no TLS, no site authentication (local tests)"
    )
    p.add_argument("--min-sites", type=int, help="sites to wait for before each round")
    p.add_argument("--rounds", type=int, help="override the job's number of rounds")
    p.add_argument(
        "--round-retries", type=int, default=3, help="retries of a round with too few replies"
    )
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval (s)")
    p.add_argument(
        "--max-sites",
        type=int,
        default=1000,
        help="most sites connected at once (each holds one stream and one server thread)",
    )
    p.add_argument(
        "--verbose", "-v", action="store_true", help="log every connection event (and gRPC's own)"
    )
    p.set_defaults(func=run)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from consortia.cli.output import setup_output

    console = setup_output(args.verbose)  # before gRPC loads
    from consortia.core.memory import keep_freed_memory

    keep_freed_memory()  # models travel in MiB-sized messages: reuse their buffers

    from consortia.core.errors import ConfigError
    from consortia.deployment import Deployment, DeployOptions, prepare_job
    from consortia.fleet.grpc import GrpcFleet
    from consortia.monitor.progress import summary_table

    # Site arrivals and departures are worth showing even without --verbose.
    logging.getLogger("consortia.fleet.grpc").setLevel(logging.INFO)
    if not args.insecure and args.pki is None:
        raise ConfigError("--pki DIR is required (TLS always); --insecure for local tests only")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)  # stop like Ctrl-C: state is kept

    job = prepare_job(args.job)

    def make_fleet(job_id: str) -> GrpcFleet:
        fleet = GrpcFleet(
            args.address,
            job_id=job_id,
            pki_dir=None if args.insecure else args.pki,
            insecure=args.insecure,
            heartbeat_s=args.heartbeat,
            max_sites=args.max_sites,
            wait_for_manifest=True,  # the run declares the job's manifest right after
        )
        tls = "INSECURE, no TLS" if args.insecure else "mutual TLS"
        console.print(f"[bold]job {job_id}[/]: listening on {fleet.address} ({tls})")
        return fleet

    options = DeployOptions(
        out=args.out,
        resume=args.resume,
        min_sites=args.min_sites,
        rounds=args.rounds,
        round_retries=args.round_retries,
    )
    summary = Deployment(job, options, make_fleet, ConsoleReporter(console)).run()
    console.print(summary_table(summary))
    if summary.get("status") == "degraded":
        print(f"consortia: {summary['degraded']}", file=sys.stderr)
        return 3
    return 0
