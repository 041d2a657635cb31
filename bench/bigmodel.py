"""W6, large models: 10M float32 parameters (40 MB), 100 sites, 20 a round, 3 rounds,
trivial local work, central evaluation every round (the task is ``examples/bigmodel/app.py``).

Usage: ``python bench/bigmodel.py [--reps 3] [--configs pool:1 pool:2 pool:4 debug]
[--flower PYTHON --flower-ref DIR] [--json OUT]``.

Each run is a fresh child process, measured from spawn to exit with its whole process tree
sampled for memory (see _measure.py). Per configuration it prints the median of the runs:
whole-process wall time, median round time, peak tree PSS and that peak as a number of model
copies above the child's own PSS just before the simulation starts (its baseline: the
interpreter, NumPy and consortia loaded). With ``--flower``, Flower 1.42 runs the same
workload in the same sitting (its reference script ``w6_bigmodel.py`` from the folder
``--flower-ref``, with the given interpreter of Flower's own virtual environment), measured
the same way, interleaved with ours. Targets (issue 14): the pool's round no slower than the
debug fleet's and at least 5x faster than Flower's; peak PSS at most a quarter of Flower's
and at most (workers + 4) model copies above the baseline; the same final digest on every
fleet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _measure import MIB, load_note, measure, median

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "examples" / "bigmodel"
PARAMS = 10_000_000
MODEL_MIB = PARAMS * 4 / MIB


def job_dict(fleet: str, workers: int, rounds: int) -> dict[str, Any]:
    return {
        "name": "w6-bigmodel",
        "rounds": rounds,
        "seed": 0,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": {"preset": "fedavg", "sites_per_round": 20, "min_sites": 2},
        "evaluation": {"central_every": 1},
        "simulation": {
            "sites": 100,
            "workers": workers,
            "fleet": fleet,
            "partition": {"method": "iid", "seed": 0},
        },
    }


def run_child(fleet: str, workers: int, rounds: int, result_path: Path) -> None:
    """Inside the measured process: the baseline PSS, then one simulation."""
    import psutil

    import consortia
    from consortia.core.config import parse_job

    job = parse_job(job_dict(fleet, workers, rounds), "w6-bigmodel")
    baseline = psutil.Process().memory_full_info().pss
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as tmp:
        result = consortia.simulate(job, out=Path(tmp) / "run", base_dir=APP_DIR)
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    result_path.write_text(
        json.dumps(
            {
                "baseline_pss_mib": baseline / MIB,
                "round_s": [float(r["seconds"]) for r in result.history],
                "digest": result.digest,
                "summary_peak": summary.get("peak_memory"),
            }
        )
    )


def _ours(script: str, config: str, rounds: int) -> dict[str, Any]:
    fleet, _, workers = config.partition(":")
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, script, "--child", fleet, workers or "1", str(rounds), str(out)]
        m = measure(cmd)
        if m.returncode != 0:
            raise SystemExit(f"{config} run failed with exit code {m.returncode}")
        child = json.loads(out.read_text())
    pss = m.peak_pss / MIB
    return {
        "wall_s": m.wall_s,
        "round_s": median(child["round_s"]),
        "peak_pss_mib": pss,
        "copies_above_baseline": (pss - child["baseline_pss_mib"]) / MODEL_MIB,
        "digest": child["digest"],
        "summary_peak": child["summary_peak"],
    }


def _flower(python: str, ref: Path, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flower-bench-") as tmp:
        out = Path(tmp) / "w6.json"
        cmd = [python, str(ref / "w6_bigmodel.py"), "--out", str(out), "--rounds", str(rounds)]
        m = measure(cmd, quiet=True)
        if m.returncode != 0:
            raise SystemExit(f"Flower's run failed with exit code {m.returncode}")
        res = json.loads(out.read_text())
    return {
        "wall_s": m.wall_s,
        "round_s": median(res["per_round_s"]),
        "peak_pss_mib": m.peak_pss / MIB,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="W6: large models (see docs/benchmarks.md).")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=["pool:1", "pool:2", "pool:4", "debug"])
    ap.add_argument("--flower", help="Python of a virtual environment with flwr 1.42 installed")
    ap.add_argument("--flower-ref", type=Path, help="folder holding Flower's w6_bigmodel.py")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fleet, workers, rounds, out = args.child
        run_child(fleet, int(workers), int(rounds), Path(out))
        return
    if args.flower and not args.flower_ref:
        ap.error("--flower needs --flower-ref")
    configs = list(args.configs) + (["flower"] if args.flower else [])
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    print(f"W6: {args.reps} runs per configuration, {load_note()}", flush=True)
    for rep in range(args.reps):
        for config in configs:  # interleaved: a noisy spell hits every configuration alike
            r = (
                _flower(args.flower, args.flower_ref, args.rounds)
                if config == "flower"
                else _ours(__file__, config, args.rounds)
            )
            runs[config].append(r)
            copies = r.get("copies_above_baseline")
            print(
                f"rep {rep + 1} {config:<7} wall {r['wall_s']:6.2f} s  round "
                f"{r['round_s']:6.3f} s  peak PSS {r['peak_pss_mib']:6.0f} MiB"
                + (f" ({copies:.1f} models above baseline)" if copies is not None else ""),
                flush=True,
            )
    print(f"\nmedians of {args.reps} ({load_note()} at the end)")
    medians: dict[str, dict[str, Any]] = {}
    for config, rs in runs.items():
        med = {
            k: median([r[k] for r in rs])
            for k in ("wall_s", "round_s", "peak_pss_mib", "copies_above_baseline")
            if k in rs[0]
        }
        med["digests"] = sorted({r["digest"] for r in rs if "digest" in r})
        medians[config] = med
        print(
            f"  {config:<7} wall {med['wall_s']:6.2f} s  round {med['round_s']:6.3f} s  "
            f"peak PSS {med['peak_pss_mib']:6.0f} MiB"
            + (
                f"  {med['copies_above_baseline']:.1f} models above baseline"
                if "copies_above_baseline" in med
                else ""
            )
        )
    digests = {d for c, m in medians.items() for d in m["digests"]}
    print(f"  final digests: {', '.join(d[:16] for d in sorted(digests))}")
    if "flower" in medians:
        fl = medians["flower"]
        for config, med in medians.items():
            if config != "flower":
                print(
                    f"  {config:<7} / Flower: round {med['round_s'] / fl['round_s']:.3f}, "
                    f"peak PSS {med['peak_pss_mib'] / fl['peak_pss_mib']:.3f}"
                )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()
