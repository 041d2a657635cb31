"""The chaos fault benchmark (bench/_chaos_faults.py) in its quick form: 6 real sites over
6 rounds, two of them SIGKILLed or stalled every round, the server SIGKILLed twice and
resumed; the final digest equals the reference run's and nothing is lost. Also: the plan
of faults is a function of the seed alone, and the audit does see a damaged run folder."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _chaos_faults  # noqa: E402  (bench/_chaos_faults.py)
from _faults_audit import audit  # noqa: E402
from _faults_plan import Plan  # noqa: E402

SITES = tuple(f"site-{i:02d}" for i in range(20))


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("chaos-faults")
    figures = folder / "figures.json"
    code = _chaos_faults.main(["--quick", "--keep", str(folder), "--json", str(figures)])
    assert code == 0, figures.read_text() if figures.exists() else "no figures"
    return folder, json.loads(figures.read_text())


def test_the_quick_run_survives_server_kills_with_the_reference_digest(
    quick: tuple[Path, dict],
) -> None:
    _, figures = quick
    assert figures["final_digests_equal"] and figures["nothing_lost"], figures
    assert figures["rounds_with_equal_digest"] == 6
    reference, killed = figures["runs"]
    assert reference["server_kills"] == 0 and killed["server_kills"] == 2
    assert killed["server_kill_rounds"] == Plan(SITES[:6], 6, 0.3, 1).server_kill_rounds()
    for run in (reference, killed):
        assert run["rounds_completed"] == 6 and run["problems"] == []
        assert run["final_digest"] == reference["final_digest"] != ""
    # The plan's 2 faulty sites a round, 12 in all, were enacted in the reference run; the
    # rounds the server died in were played twice, with their faults enacted again.
    assert reference["site_kills"] + reference["site_stalls"] == 12
    assert reference["site_kills"] > 0 and reference["site_stalls"] > 0
    assert killed["site_kills"] + killed["site_stalls"] == 12 + 2 * 2


def test_the_audit_reports_what_a_damaged_run_folder_lost(
    quick: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = quick
    plan = Plan(SITES[:6], 6, 0.3, 1)
    run = tmp_path / "run"
    shutil.copytree(folder / "server-kills" / "run", run)
    assert audit(run, plan) == []
    # Another seed would have dropped other sites: every round's participants disagree.
    assert len(audit(run, Plan(SITES[:6], 6, 0.3, 2))) >= 5
    (run / "checkpoints" / "round_0004.safetensors").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    db = sqlite3.connect(run / "state.sqlite")
    db.execute("UPDATE rounds SET attempts = 2 WHERE number = 5")
    db.execute("DELETE FROM participants WHERE round = 6 AND outcome = 'replied'")
    db.commit()
    db.close()
    problems = "\n".join(audit(run, plan))
    assert "checkpoints missing for rounds [4]" in problems
    assert "metrics.jsonl has rounds [1, 2, 4, 5, 6]" in problems
    assert "round 5: completed after 2 attempt(s)" in problems
    assert "round 6: replied []" in problems


def test_the_faults_are_a_function_of_the_seed_alone() -> None:
    plan = Plan(SITES, 50, 0.3, seed=1)
    again = Plan(SITES, 50, 0.3, seed=1)
    assert [plan.fates(r) for r in range(1, 51)] == [again.fates(r) for r in range(1, 51)]
    assert all(len(plan.fates(r)) == 6 for r in range(1, 51))
    assert all(len(plan.healthy(r)) == plan.healthy_per_round == 14 for r in range(1, 51))
    # Not the same sites every round, and both kinds of fault occur.
    assert len({tuple(plan.fates(r)) for r in range(1, 51)}) > 40
    kinds = [f for r in range(1, 51) for f in plan.fates(r).values()]
    assert 0.3 < kinds.count("kill") / len(kinds) < 0.7
    assert plan.fates(1) != Plan(SITES, 50, 0.3, seed=2).fates(1)
    kills = plan.server_kill_rounds()
    assert len(set(kills)) == 2 and all(2 <= r <= 50 for r in kills)
    assert kills == again.server_kill_rounds()


@pytest.mark.parametrize(
    ("sites", "fraction", "kills", "message"),
    [
        (SITES[:3], 0.9, 2, "leaves no healthy site"),
        (SITES[:3], 1.0, 2, r"fraction must lie in \[0, 1\)"),
        (SITES[:1], 0.3, 0, "at least 2 distinct sites"),
        (SITES[:3], 0.3, 7, r"server kills must lie in \[0, rounds=6\]"),
    ],
)
def test_a_plan_that_cannot_run_is_refused_in_words(
    sites: tuple[str, ...], fraction: float, kills: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Plan(sites, 6, fraction, 1, kills)


def test_the_command_line_refuses_an_impossible_plan_or_a_used_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _chaos_faults.main(["--sites", "4", "--fraction", "0.9"])
    assert exc.value.code == 2
    assert "leaves no healthy site" in capsys.readouterr().err
    (tmp_path / "old-run").mkdir()
    with pytest.raises(SystemExit) as exc:
        _chaos_faults.main(["--quick", "--keep", str(tmp_path)])
    assert exc.value.code == 2
    assert "the folder must be new or empty" in capsys.readouterr().err
