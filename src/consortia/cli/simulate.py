"""``consortia simulate JOB``: run a job's federation of virtual sites on this machine."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a federation of simulated sites from a job file")
    p.add_argument("job", type=Path, help="job file (TOML)")
    p.add_argument("--rounds", type=int, help="override the job's number of rounds")
    p.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>)")
    p.add_argument("--seed", type=int, help="override the job's seed")
    p.add_argument(
        "--debug",
        action="store_true",
        help="run sites one by one in this process (DP noise seeded: reproducible, not private)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last completed round (same job file)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consortia.monitor.progress import summary_table
    from consortia.simulation import simulate

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=False)

    # A failed round raises a ConsortiaError: main() prints it on one line and exits 2.
    def notices(event: object) -> None:
        from consortia.core.events import Notice

        if isinstance(event, Notice):
            Console(stderr=True, soft_wrap=True).print(Text(f"note: {event.message}"))

    result = simulate(
        args.job,
        listeners=[notices],
        rounds=args.rounds,
        out=args.out,
        seed=args.seed,
        debug=args.debug,
        progress=not args.quiet,
        resume=args.resume,
    )
    if not args.quiet:
        console.print(summary_table(result.summary))
    if result.summary.get("status") == "degraded":
        print(f"consortia: {result.summary['degraded']}", file=sys.stderr)
        return 3
    return 0
