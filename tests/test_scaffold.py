"""``consortia new`` writes a project that runs at once, in simulation and as a real site."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from consortia.cli import main
from consortia.cli.client import load_site
from consortia.scaffold import FRAMEWORKS


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_new_project_simulates_and_serves_a_site(
    framework: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / f"my-{framework}"
    assert main(["new", str(project), "--framework", framework]) == 0
    assert sorted(p.name for p in project.iterdir()) == [
        "README.md",
        "app.py",
        "job.toml",
        "site.py",
    ]
    assert f'name = "my-{framework}"' in (project / "job.toml").read_text()
    assert f'framework = "{framework}"' in (project / "job.toml").read_text()
    # The written code is clean Python (the shared template holds placeholders).
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "100", str(project)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout
    out = tmp_path / "run"
    job = str(project / "job.toml")
    assert main(["simulate", job, "--out", str(out), "--rounds", "3", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # Well above chance after 3 rounds: digits 0.1 (torch), the majority class 0.63 (others).
    better_than = {"torch": 0.5, "sklearn": 0.85, "numpy": 0.85}[framework]
    assert summary["status"] == "completed"
    assert summary["final_metrics"]["accuracy"] > better_than
    # The deployment side: the site app loads its own share, named by the site.
    site = load_site(f"{project / 'site.py'}:make_site", "hospital-a")
    assert site.site_id == "hospital-a" and site.data.num_train > 50
    other = load_site(f"{project / 'site.py'}:make_site", "hospital-b")
    assert other.data.num_train > 0


def test_new_refuses_a_folder_that_holds_anything(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["new", str(tmp_path), "--framework", "numpy", "--name", "x"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert main(["new", str(tmp_path / "p"), "--framework", "jax"]) == 2
