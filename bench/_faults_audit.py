""" "Nothing lost", checked from a finished run folder alone (store, metrics, checkpoints,
summary), the way an auditor would, without trusting what the driver believes happened.

A run whose server was killed twice must still hold every round 1..R once, completed at
the first attempt, in the metrics file in order, each with its checkpoint; and in every
round exactly the plan's healthy sites must have been heard (the others failed): that is
also the check that a resumed server asked the same sites as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from _faults_plan import Plan
from _faults_procs import query


def audit(out: Path, plan: Plan) -> list[str]:
    """Every way in which the run folder falls short; empty when nothing was lost."""
    problems: list[str] = []
    rounds = list(range(1, plan.rounds + 1))
    if query(out, "SELECT status FROM job") != [("completed",)]:
        problems.append(f"job status in the store: {query(out, 'SELECT status FROM job')}")
    rows = query(out, "SELECT number, status, attempts FROM rounds ORDER BY number")
    if [r[0] for r in rows] != rounds:
        problems.append(f"store holds rounds {[r[0] for r in rows]}, expected 1..{plan.rounds}")
    for number, status, attempts in rows:
        if status != "completed" or attempts != 1:
            problems.append(f"round {number}: {status} after {attempts} attempt(s)")
    metrics = out / "metrics.jsonl"
    seen = (
        [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
        if metrics.is_file()
        else []
    )
    if seen != rounds:
        problems.append(f"metrics.jsonl has rounds {seen}, expected 1..{plan.rounds} in order")
    missing = [
        i
        for i in range(plan.rounds + 1)
        if not (out / "checkpoints" / f"round_{i:04d}.safetensors").is_file()
    ]
    if missing:
        problems.append(f"checkpoints missing for rounds {missing}")
    problems += _summary_problems(out, plan)
    for rnd in rounds:
        problems += _participant_problems(out, plan, rnd)
    return problems


def round_digests(out: Path) -> list[str]:
    return [str(r[0]) for r in query(out, "SELECT model_digest FROM rounds ORDER BY number")]


def _summary_problems(out: Path, plan: Plan) -> list[str]:
    path = out / "summary.json"
    if not path.is_file():
        return ["no summary.json"]
    summary = json.loads(path.read_text())
    problems = []
    if summary.get("status") != "completed" or summary.get("rounds_completed") != plan.rounds:
        problems.append(
            f"summary.json: status {summary.get('status')!r}, "
            f"{summary.get('rounds_completed')} rounds completed"
        )
    last = query(out, "SELECT model_digest FROM rounds WHERE number = ?", plan.rounds)
    if [(summary.get("model_digest"),)] != last:
        problems.append(f"summary.json's digest is not the store's round {plan.rounds}")
    return problems


def _participant_problems(out: Path, plan: Plan, rnd: int) -> list[str]:
    rows = query(
        out, "SELECT site, outcome FROM participants WHERE round = ? AND phase = 'fit'", rnd
    )
    replied = sorted(s for s, outcome in rows if outcome == "replied")
    failed = sorted(s for s, outcome in rows if outcome == "failed")
    if replied != sorted(plan.healthy(rnd)) or failed != sorted(plan.fates(rnd)):
        return [
            f"round {rnd}: replied {replied}, failed {failed}; the plan: healthy "
            f"{sorted(plan.healthy(rnd))}, faulty {sorted(plan.fates(rnd))}"
        ]
    return []
