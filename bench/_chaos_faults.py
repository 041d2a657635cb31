"""chaos, part (b) faults (issue 8): sites SIGKILLed or stalled every round, the server
SIGKILLed twice and resumed; the final model must equal the run without server kills.

Usage: ``python bench/chaos.py faults [--sites 20] [--rounds 50] [--fraction 0.3]
[--seed 1] [--server-kills 2] [--quick] [--json OUT] [--keep DIR]`` (or the same options
to ``python bench/_chaos_faults.py``).

Two runs of one job over real ``consortia server`` / ``consortia client`` processes on
loopback with mutual TLS: a reference, and the same with the server SIGKILLed mid-round in
two rounds drawn from the seed and restarted with ``--resume``. In both, each round the
same ``fraction`` of the sites (drawn from a hash of seed, round and site, never from
timing) are SIGKILLed or SIGSTOPped by the driver from outside, and killed sites are
restarted (see _faults_driver.py for how the rounds are kept independent of timing). The
script exits 1 if the final digests differ or either run lost anything (_faults_audit.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _faults_audit import audit, round_digests
from _faults_driver import FaultBenchError, FaultRun
from _faults_plan import Plan
from _faults_procs import completed_rounds
from consortia.security.pki import add_site, init_pki

DEADLINE_S = 30.0  # never reached in a healthy round: min_replies ends the phase first


@dataclass
class RunFigures:
    run: str
    rounds_completed: int
    site_kills: int
    site_stalls: int
    server_kills: int
    server_kill_rounds: list[int]
    wall_s: float
    final_digest: str
    round_digests: list[str] = field(repr=False)
    problems: list[str] = field(default_factory=list)


def run_once(
    plan: Plan, pki: Path, folder: Path, name: str, kill_server_in: list[int]
) -> RunFigures:
    started = time.monotonic()
    run = FaultRun(plan, pki, folder, kill_server_in, DEADLINE_S)
    problems: list[str] = []
    try:
        run.run()
    except FaultBenchError as exc:
        problems.append(f"{name}: {exc}")
    finally:
        problems += run.close()
    wall = time.monotonic() - started
    problems += audit(run.out, plan)
    digests = round_digests(run.out)
    return RunFigures(
        run=name,
        rounds_completed=completed_rounds(run.out),
        site_kills=run.counts.site_kills,
        site_stalls=run.counts.site_stalls,
        server_kills=run.counts.server_kills,
        server_kill_rounds=run.counts.server_kill_rounds,
        wall_s=round(wall, 1),
        final_digest=digests[-1] if digests else "",
        round_digests=digests,
        problems=problems,
    )


def make_pki(folder: Path, sites: tuple[str, ...]) -> Path:
    pki = init_pki(folder / "pki")
    for site in sites:
        add_site(pki, site)
    return pki


def report(plan: Plan, runs: list[RunFigures]) -> dict[str, object]:
    ref, hit = runs
    equal = bool(ref.final_digest) and ref.final_digest == hit.final_digest
    same_rounds = sum(a == b for a, b in zip(ref.round_digests, hit.round_digests, strict=False))
    lost = any(r.problems for r in runs)
    header = (
        f"{'run':<14}{'rounds':>7}{'site kills':>12}{'site stalls':>13}{'server kills':>14}"
        f"{'wall s':>8}  {'final digest':<17}{'equal':>6}"
    )
    print(
        f"faults: {len(plan.sites)} sites, {plan.rounds} rounds, {plan.faulty_per_round} sites "
        f"({plan.fraction:.0%}) a round SIGKILLed or SIGSTOPped from outside by the driver, "
        f"seed {plan.seed}"
    )
    print(header)
    for r in runs:
        print(
            f"{r.run:<14}{r.rounds_completed:>7}{r.site_kills:>12}{r.site_stalls:>13}"
            f"{r.server_kills:>14}{r.wall_s:>8.1f}  {r.final_digest[:16]:<17}"
            f"{'yes' if equal else 'no':>6}"
        )
    print(
        f"server SIGKILLed mid-round in rounds {hit.server_kill_rounds} and resumed; "
        f"round digests equal in {same_rounds}/{plan.rounds} rounds; "
        f"nothing lost: {'no' if lost else 'yes'}"
    )
    for r in runs:
        for problem in r.problems:
            print(f"  {r.run}: {problem}")
    return {
        "sites": len(plan.sites),
        "rounds": plan.rounds,
        "fraction": plan.fraction,
        "faulty_per_round": plan.faulty_per_round,
        "seed": plan.seed,
        "final_digests_equal": equal,
        "rounds_with_equal_digest": same_rounds,
        "nothing_lost": not lost,
        "runs": [{k: v for k, v in asdict(r).items() if k != "round_digests"} for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--fraction", type=float, default=0.3, help="faulty share of sites per round")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-kills", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="6 sites, 6 rounds: a smoke test")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", type=Path, help="keep the run folders here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.sites, args.rounds = 6, 6
    try:
        plan = Plan(
            tuple(f"site-{i:02d}" for i in range(args.sites)),
            args.rounds,
            args.fraction,
            args.seed,
            args.server_kills,
        )
    except ValueError as exc:
        p.error(str(exc))
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        p.error(f"--keep {args.keep}: the folder must be new or empty")
    with tempfile.TemporaryDirectory(prefix="chaos-faults-") as tmp:
        base = args.keep or Path(tmp)
        pki = make_pki(base, plan.sites)
        runs = [
            run_once(plan, pki, base / "reference", "reference", []),
            run_once(plan, pki, base / "server-kills", "server kills", plan.server_kill_rounds()),
        ]
        figures = report(plan, runs)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["final_digests_equal"] and figures["nothing_lost"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
