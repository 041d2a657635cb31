"""``consortia server JOB``: run a job's rounds for real sites that connect over gRPC.

consortia server JOB --address HOST:PORT --pki DIR --out DIR [--resume] [--insecure]
                     [--min-sites N] [--rounds N]
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.logging import RichHandler


class ConsoleReporter:
    """Connected sites and round progress on the terminal, one line per event (readable
    in a log file as well as live)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def waiting(self, connected: list[str], needed: int) -> None:
        names = ", ".join(connected) or "none"
        self.console.print(
            f"[yellow]waiting for sites[/]: {len(connected)} of {needed} connected ({names})"
        )

    def round_started(self, number: int, total: int, connected: list[str]) -> None:
        self.console.print(
            f"[bold]round {number}/{total}[/] starting; {len(connected)} sites connected: "
            + ", ".join(connected)
        )

    def round_done(self, record: Any, total: int) -> None:
        m = record.metrics
        acc = m.get("accuracy", m.get("federated_accuracy"))
        shown = f", accuracy {acc:.4f}" if isinstance(acc, float) else ""
        failed = f", [red]{len(record.failures)} failed[/]" if record.failures else ""
        self.console.print(
            f"[green]round {record.round}/{total} done[/] in {record.seconds:.2f} s: "
            f"{record.replies}/{record.sites} replies{failed}{shown}"
        )
        for f in record.failures:
            self.console.print(f"  [red]{f.site}[/]: {f.reason}")

    def round_failed(self, number: int, error: str, attempt: int) -> None:
        self.console.print(
            f"[red]round {number} failed[/] (attempt {attempt}): {error}; trying again"
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
    p.add_argument("--verbose", "-v", action="store_true", help="log every connection event")
    p.set_defaults(func=run)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from consortia.core.errors import ConfigError
    from consortia.fleet.grpc import GrpcFleet
    from consortia.monitor.progress import summary_table
    from consortia.server.deploy import Deployment, DeployOptions, prepare_job

    console = Console()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
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
    return 0
