"""What a compliance report is made from: a run folder's files, read once and checked.

The ledger is read and verified with the same function as ``consortia audit verify``
(``server.ledger_check.verify_run``), so the report and the command can never disagree.
The other files (privacy.json, summary.json, metrics.jsonl, the job file) are the
server's own; they are still parsed strictly, and a file that is not what it claims to be
is an error naming it rather than a section quietly left empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortia.core.errors import ConsortiaError
from consortia.ledger.chain import Entry
from consortia.ledger.verify import VerifyReport
from consortia.server.ledger_check import load, verify_run

JOB_FILES = ("job.toml", "job.json")  # what RunFolder.write_job names the job's copy


class ReportError(ConsortiaError):
    """A run folder the report cannot be made from."""


@dataclass(frozen=True)
class RunFiles:
    run_dir: Path
    entries: list[Entry]
    verify: VerifyReport
    privacy: dict[str, Any] | None  # privacy.json (DP runs only)
    summary: dict[str, Any] | None  # summary.json (absent while a run is going on)
    metrics: list[dict[str, Any]]  # metrics.jsonl, one row per round
    job_file: str | None  # the job file's name in the run folder
    job_bytes: bytes | None


def _json_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: a JSON object was expected, found {type(data).__name__}")
    return data


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ReportError(f"{path}, line {n}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ReportError(f"{path}, line {n}: a JSON object was expected")
        rows.append(row)
    return rows


def read_run(run_dir: Path) -> RunFiles:
    """Everything the report states, from ``run_dir``; the ledger verified on the way."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder")
    entries, _ = load(run_dir)
    report, _ = verify_run(run_dir)
    job_file = next((name for name in JOB_FILES if (run_dir / name).is_file()), None)
    return RunFiles(
        run_dir=run_dir,
        entries=entries,
        verify=report,
        privacy=_json_object(run_dir / "privacy.json"),
        summary=_json_object(run_dir / "summary.json"),
        metrics=_metrics(run_dir / "metrics.jsonl"),
        job_file=job_file,
        job_bytes=None if job_file is None else (run_dir / job_file).read_bytes(),
    )
