"""The compliance report of a run (issue 12, part 5): ``consortia report RUN_DIR``.

``sources`` reads the run folder (verifying its ledger as ``consortia audit verify``
does), ``sections`` and ``agreements`` turn it into the report's JSON content, ``page``
and ``chart`` render that content as one self-contained HTML page. docs/report.md says
what each section states and what it deliberately leaves out.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from consortia.core.version import consortia_version
from consortia.monitor.report.page import render_html
from consortia.monitor.report.sections import build_report
from consortia.monitor.report.sources import ReportError, read_run

__all__ = ["ReportError", "build_report", "make_report", "render_html", "write_report"]
HTML_FILE, JSON_FILE = "report.html", "report.json"


def make_report(run_dir: Path, today: dt.date | None = None) -> dict[str, Any]:
    """The report's content for ``run_dir`` (``today``: the date expiries are held
    against; the local date when not given)."""
    return build_report(read_run(Path(run_dir)), consortia_version(), today or dt.date.today())


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: Path, today: dt.date | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``report.html`` and ``report.json`` into ``run_dir``; return both paths and
    the content."""
    run_dir = Path(run_dir)
    report = make_report(run_dir, today)
    html_path, json_path = run_dir / HTML_FILE, run_dir / JSON_FILE
    _write(json_path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    _write(html_path, render_html(report))
    return html_path, json_path, report
