"""Progress bar and summary table on the terminal (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from consortia.core.events import RoundDone, RunFinished, RunStarted


class ProgressBar:
    """Shown from the run's start (once it is known to run) to its end."""

    def __init__(
        self, total_rounds: int, start_round: int = 0, console: Console | None = None
    ) -> None:
        self._progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(
            "rounds", total=total_rounds, completed=start_round, acc="-"
        )

    def __call__(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self._progress.update(self._task, total=event.rounds, completed=event.start_round)
            self._progress.start()
        elif isinstance(event, RunFinished):
            self._progress.stop()
        elif isinstance(event, RoundDone):
            m = event.record.metrics
            acc = m.get("accuracy", m.get("federated_accuracy"))
            self._progress.update(
                self._task,
                completed=event.record.round,
                acc="-" if acc is None else f"{acc:.4f}",
            )


def summary_table(summary: dict[str, Any]) -> Table:
    """The run's headline. Every value is plain text (``Text``), never console markup:
    metric names, site names and failure reasons come from sites."""
    table = Table(title=Text(f"consortia run: {summary.get('job', '')}"), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    def row(key: str, value: object) -> None:
        table.add_row(Text(key), Text(str(value)))

    for k in ("status", "rounds_completed", "seconds", "failures"):
        if k in summary:
            row(k, summary[k])
    for k, v in (summary.get("final_metrics") or {}).items():
        row(k, f"{v:.4f}" if isinstance(v, float) else v)
    privacy = summary.get("privacy")
    if privacy:
        eps = privacy.get("epsilon")
        if eps:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in eps.items() if k != "best" and v)
            row("privacy", f"{privacy['mode']} DP: epsilon {shown} at delta {privacy['delta']:g}")
        else:
            row(
                "privacy",
                f"local DP: max site epsilon {privacy['epsilon_max_over_sites']:.4g} "
                f"at delta {privacy['delta']:g}",
            )
    for reason, sites in failing_by_reason(summary.get("failing_sites") or {}).items():
        shown = ", ".join(sites[:8]) + (f" and {len(sites) - 8} more" if len(sites) > 8 else "")
        row(f"failed: {len(sites)} site(s)", f"{shown}: {reason}")
    flagged = summary.get("audit_flagged")
    if flagged:
        parts = [f"{site} (rounds {', '.join(map(str, r))})" for site, r in flagged.items()]
        shown = ", ".join(parts[:8]) + (f" and {len(parts) - 8} more" if len(parts) > 8 else "")
        row(f"audit flagged: {len(flagged)} site(s)", shown)
    for k in ("degraded", "stopped", "model", "model_digest", "run_dir", "error"):
        if summary.get(k):
            row(k, summary[k])
    return table


def failing_by_reason(failing: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Sites grouped by their most frequent failure reason, biggest group first."""
    groups: dict[str, list[str]] = {}
    for site, info in sorted(failing.items()):
        reasons = info.get("reasons") or {"(no reason given)": 1}
        top = max(reasons.items(), key=lambda kv: kv[1])[0]
        groups.setdefault(top, []).append(site)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))
