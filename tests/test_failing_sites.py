"""No silent failures: a site that fails every round it is asked ends the run 'degraded'
(exit status 3) unless the job tolerates it, and the summary names it and its reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from consortia.cli import main
from consortia.monitor.progress import summary_table

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _job(tmp_path: Path, tolerate: bool) -> Path:
    shutil.copy(FIXTURES / "toy_app.py", tmp_path / "toy_app.py")
    text = (FIXTURES / "toy_job.toml").read_text()
    text = text.replace('app = "toy_app.py"', 'app = "toy_app.py"\nsite = "make_site_one_broken"')
    text = text.replace("sites_per_round = 4", "sites_per_round = 6")
    if tolerate:
        text = text.replace("min_sites = 2", "min_sites = 2\ntolerate_failing_sites = true")
    job = tmp_path / "job.toml"
    job.write_text(text)
    return job


def test_a_site_failing_every_round_degrades_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["simulate", str(_job(tmp_path, False)), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "1 site(s) failed every time they were asked: site-0001" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "degraded" and summary["rounds_completed"] == 3
    info = summary["failing_sites"]["site-0001"]
    assert info["asked"] == info["failed"] == 3
    assert list(info["reasons"]) == ["RuntimeError: [red]site database unavailable[/]"]
    # The table shows the site and its reason as text: a site's words are never markup.
    console = Console(record=True, width=200)
    console.print(summary_table(summary))
    shown = console.export_text()
    assert "failed: 1 site(s)" in shown and "[red]site database unavailable[/]" in shown


def test_a_job_may_tolerate_failing_sites(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", str(_job(tmp_path, True)), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and "site-0001" in summary["failing_sites"]


def test_simulation_says_before_round_one_which_sites_are_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(FIXTURES / "toy_app.py", tmp_path / "toy_app.py")
    text = (FIXTURES / "toy_job.toml").read_text().replace("rounds = 3", "rounds = 1")
    text = text.replace("sites = 6", "sites = 60")
    text += '\n[simulation.partition]\nmethod = "dirichlet"\nalpha = 0.05\n'
    job = tmp_path / "job.toml"
    job.write_text(text)
    out = tmp_path / "run"
    assert main(["simulate", str(job), "--out", str(out), "--quiet"]) in (0, 3)
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    sizes = json.loads((out / "partition.json").read_text())["sites"]
    empty = sorted(s for s, v in sizes.items() if v["examples"] == 0)
    assert empty, "the partition should leave some sites empty"
    assert f"note: {len(empty)} of 60 sites hold no training examples" in err
    assert summary["notices"][0].startswith(f"{len(empty)} of 60 sites hold no training")


def test_a_deployed_site_without_examples_refuses_to_join(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "empty_site.py"
    app.write_text(
        "import numpy as np\n"
        "from consortia import FunctionTrainer, Site, SiteData\n\n"
        "def make(name):\n"
        "    trainer = FunctionTrainer(lambda: {'w': np.zeros(1)}, None, None)\n"
        "    return Site(name, trainer, SiteData(np.zeros((0, 1)), np.zeros(0)))\n"
    )
    code = main(
        [
            "client",
            "--server",
            "127.0.0.1:1",
            "--site",
            "site-x",
            "--insecure",
            "--app",
            f"{app}:make",
            "--max-attempts",
            "1",
        ]
    )
    assert code == 2
    assert "site site-x: its app loaded no training examples" in capsys.readouterr().err


def test_a_model_too_narrow_for_the_labels_is_one_clear_error_before_round_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = Path(__file__).resolve().parents[1] / "examples" / "digits"
    app = (digits / "app.py").read_text().replace("nn.Linear(128, 10)", "nn.Linear(128, 3)")
    assert "nn.Linear(128, 3)" in app
    (tmp_path / "app.py").write_text(app)
    (tmp_path / "job.toml").write_text((digits / "job.toml").read_text())
    out = tmp_path / "run"
    assert main(["simulate", str(tmp_path / "job.toml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "preflight: the model has 3 outputs but the labels run from 0 to 9 (10 classes)" in err
    assert not (out / "state.sqlite").exists()  # refused before anything was started


class _Crashing:
    """A site app whose fit kills its own process, as a native crash would."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id

    def handle(self, message: object) -> object:
        import os

        os._exit(7)


def test_a_site_that_kills_its_worker_is_named_and_the_round_ends_in_seconds(
    tmp_path: Path,
) -> None:
    import time

    from consortia import simulate
    from consortia.task import load_app

    shutil.copy(FIXTURES / "toy_app.py", tmp_path / "toy_app.py")
    text = (FIXTURES / "toy_job.toml").read_text().replace("rounds = 3", "rounds = 1")
    text = text.replace("sites_per_round = 4", "sites_per_round = 6\ndeadline_s = 120")
    job = tmp_path / "job.toml"
    job.write_text(text)
    app = load_app("toy_app.py", tmp_path)

    from consortia import FunctionTrainer, Site, SiteData

    data = app.load_data()

    def make_site(site_id: str):
        if site_id == "site-0002":
            return _Crashing(site_id)
        trainer = FunctionTrainer(app.make_model, app.fit, app.evaluate)
        return Site(site_id, trainer, SiteData(data.x_train, data.y_train))

    start = time.monotonic()
    result = simulate(job, out=tmp_path / "run", make_site=make_site)
    took = time.monotonic() - start
    (row,) = result.history
    assert row["failed_sites"] == {
        "site-0002": "the site's code ended its worker process (exit code 7)"
    }
    assert row["replies"] == 5 and took < 30  # the deadline is 120 s
