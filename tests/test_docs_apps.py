"""docs/apps.md's project, run as written: its three files simulate, and its site app
serves a site."""

from __future__ import annotations

import json
import re
from pathlib import Path

from consortia.cli import main
from consortia.cli.client import load_site

DOC = Path(__file__).resolve().parents[1] / "docs" / "apps.md"


def test_the_page_project_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```(?:python|toml)\n# file: (\S+)\n(.*?)```", DOC.read_text(), re.S)
    assert sorted(name for name, _ in blocks) == ["app.py", "job.toml", "site.py"]
    for name, body in blocks:
        (tmp_path / name).write_text(body)
    out = tmp_path / "run"
    assert main(["simulate", str(tmp_path / "job.toml"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_metrics"]["accuracy"] > 0.9
    site = load_site(f"{tmp_path / 'site.py'}:make_site", "hospital-a")
    assert site.site_id == "hospital-a" and 100 < site.data.num_train < 200
