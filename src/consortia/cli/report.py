"""``consortia report RUN_DIR``: the run's compliance report, as a page and as JSON.

Writes ``RUN_DIR/report.html`` (self-contained: open it anywhere, offline) and
``RUN_DIR/report.json`` (the same content). Exits 0 when the ledger verifies, 1 when it
does not: the report is still written, and says which entry failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a run's compliance report (HTML and JSON)")
    p.add_argument("run_dir", type=Path, help="the run folder (holds state.sqlite)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consortia.cli.audit import inert
    from consortia.monitor.report import write_report

    html_path, json_path, report = write_report(args.run_dir)
    ledger = report["sections"]["ledger"]
    console = Console(highlight=False)
    console.print(Text(f"wrote {inert(str(html_path))} and {inert(str(json_path))}"))
    if not ledger["verified"]:
        console.print(Text(f"ledger {inert(ledger['result'])}", style="bold red"))
        return 1
    return 0
