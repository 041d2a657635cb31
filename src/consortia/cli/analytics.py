"""``consortia analytics JOB``: the job's DP queries across its simulated sites."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analytics", help="differentially private statistics across the job's sites")
    p.add_argument("job", type=Path, help="job file with an [analytics] section")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for analytics.json; a training run folder's privacy budget is shared",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consortia.analytics import finite, run_analytics

    result = run_analytics(args.job, out=args.out)
    if args.json:
        print(json.dumps({"results": result.results, "epsilon": result.epsilon}))
        return 0
    table = Table(title=f"DP analytics (delta {result.delta:g})")
    for col in ("query", "kind", "result", "epsilon after"):
        table.add_column(col)
    for name, r in result.results.items():
        shown = r.get("refused") or json.dumps(r["value"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        spent = "-" if "refused" in r else finite(r.get("epsilon_after"))
        table.add_row(name, r["kind"], shown, spent)
    Console().print(table)
    Console().print(f"epsilon spent in total: {finite(result.epsilon['best'])}")
    return 0
