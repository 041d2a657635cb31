"""``consortia audit verify|show RUN_DIR``: check a run's signed ledger, or read it.

``verify`` exits 0 when every hash, link, server and site signature, checkpoint file and
(with ``--site``) receipt checks out, else 1 naming the first bad entry. ``show`` prints
the timeline; everything in it that a site could have written is shown as inert text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from consortia.ledger.chain import Entry

# What the timeline shows of each kind's payload, after its round and site.
_DETAILS = {
    "job_created": ("name", "job_sha256", "mode"),
    "job_resumed": ("after_round",),
    "site_joined": ("key_type", "certificate_serial"),
    "round_opened": ("sites_asked",),
    "update_received": ("update_sha256", "bytes", "examples", "audit_flags"),
    "update_refused": ("reason",),
    "site_refused": ("reason",),
    "site_failed": ("reason",),
    "round_closed": ("model_digest", "epsilon"),
    "round_failed": ("reason",),
    "checkpoint_written": ("path", "sha256"),
    "job_finished": ("status", "rounds_completed"),
}
MAX_CELL = 120


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="verify or show a run's signed ledger")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="check the chain, every signature and checkpoint")
    v.add_argument("run_dir", type=Path, help="the run folder (holds state.sqlite)")
    v.add_argument("--site", type=Path, help="a site's receipts file: check the run against it")
    v.add_argument("--json", action="store_true", help="one JSON object on stdout")
    v.set_defaults(func=run_verify)
    s = asub.add_parser("show", help="the ledger as a timeline")
    s.add_argument("run_dir", type=Path, help="the run folder (holds state.sqlite)")
    s.add_argument("--json", action="store_true", help="every entry as JSON on stdout")
    s.set_defaults(func=run_show)


def inert(value: Any) -> str:
    """Hostile text made harmless for a terminal: control characters (ANSI escapes,
    carriage returns) shown escaped, the length capped. Rich markup is not interpreted
    because cells are ``Text`` objects."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def run_verify(args: argparse.Namespace) -> int:
    from consortia.server.ledger_check import verify_run

    report, receipts = verify_run(args.run_dir, args.site)
    if args.json:
        print(json.dumps(report.to_json() | {"receipts_checked": receipts}))
        return 0 if report.ok else 1
    console = Console(highlight=False)
    if report.problem is not None:
        console.print(Text(f"FAILED: {inert(str(report.problem))}", style="bold red"))
        return 1
    head = report.head or ""
    line = (
        f"OK: {report.entries} entries, head {head[:16]}..., {report.site_signatures} site "
        f"signatures, {report.checkpoints} checkpoints"
    )
    if receipts is not None:
        line += f", {receipts} receipts of {args.site}"
    if report.unsigned_updates:
        line += f"; {report.unsigned_updates} updates unsigned (sites without keys: insecure)"
    console.print(Text(line + f" ({report.seconds:.2f} s)", style="green"))
    return 0


def _row(e: Entry) -> tuple[str, ...]:
    try:
        data = e.data()
    except ValueError:
        data = {}
    details = "  ".join(
        f"{k}={inert(data[k])}" for k in _DETAILS.get(e.kind, ()) if data.get(k) is not None
    )
    rnd = data.get("round")
    return (
        str(e.index),
        e.time,
        inert(e.kind),
        "" if rnd is None else inert(rnd),
        inert(data.get("site", "")),
        details,
    )


def run_show(args: argparse.Namespace) -> int:
    from consortia.server.ledger_check import load

    entries, _ = load(args.run_dir)
    if args.json:
        out = [e.to_json() | {"data": _data(e)} for e in entries]
        json.dump(out, sys.stdout, ensure_ascii=False)
        print()
        return 0
    table = Table(title=f"ledger of {inert(str(args.run_dir))}", title_justify="left")
    for col in ("#", "time (UTC)", "kind", "round", "site", "details"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(*(Text(c) for c in _row(e)))
    Console(highlight=False).print(table)
    return 0


def _data(e: Entry) -> Any:
    try:
        return e.data()
    except ValueError:
        return None
