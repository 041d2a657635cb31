"""The digits workloads (digits-100 and the 1000-site scale run), shared by their scripts.

A workload is fixed by its numbers (sites, rounds, sites per round) so that other
frameworks can run exactly the same thing: scikit-learn's digits with the example's split
and scaler (``examples/digits/app.py``), a Dirichlet(0.5) label-skew partition from
``numpy.random.default_rng(0)``, the example's MLP, 1 local epoch of SGD (lr 0.05, batch
16) and central evaluation after every round.

Each measured run is a fresh child process (``SCRIPT --child --mode M --result FILE``) so
that the wall time covers interpreter start, imports and worker start-up, as a user would
see it, and the memory covers the whole process tree. The parent only spawns, samples and
prints; it never imports torch or consortia, so it adds nothing to what it measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _measure import MIB, load_note, measure, median, ratio_line

_T_START = time.perf_counter()  # the child's clock for import time starts at this import

REPO = Path(__file__).resolve().parent.parent
DIGITS_APP_DIR = REPO / "examples" / "digits"
MODES = ("parallel", "debug")


@dataclass(frozen=True)
class Reference:
    """Flower 1.42's figures on the same workload (README of shared/reference/flower)."""

    wall_s: float
    pss_mib: float
    rss_mib: float
    accuracy: float


@dataclass(frozen=True)
class Workload:
    name: str
    sites: int
    rounds: int
    sites_per_round: int
    reference: Reference
    wall_fraction: float = 0.1  # target: wall <= reference * this
    pss_fraction: float | None = None  # target: PSS <= reference * this (None: no target)
    accuracy_slack: float | None = None  # target: accuracy >= reference - this


def job_dict(w: Workload, workers: int) -> dict[str, Any]:
    """The workload as a job document (what ``consortia simulate`` would read from TOML)."""
    return {
        "name": w.name,
        "rounds": w.rounds,
        "seed": 0,
        "task": {"framework": "torch", "app": "app.py", "model": "make_model", "data": "load_data"},
        "train": {"local_epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.05},
        "strategy": {
            "preset": "fedavg",
            "sites_per_round": w.sites_per_round,
            "min_sites": 2,
            "deadline_s": 600,
        },
        "evaluation": {"central_every": 1},
        "simulation": {
            "sites": w.sites,
            "workers": workers,
            "partition": {"method": "dirichlet", "alpha": 0.5, "seed": 0},
        },
    }


def run_child(w: Workload, mode: str, workers: int, result_path: Path) -> None:
    """Inside the measured process: run the workload once and write its figures as JSON."""
    import consortia  # imported here: the parent must not pay for (or measure) these
    from consortia.core.config import parse_job

    t_imported = time.perf_counter()
    job = parse_job(job_dict(w, workers), w.name)
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as tmp:
        t0 = time.perf_counter()
        result = consortia.simulate(
            job, out=Path(tmp) / "run", debug=mode == "debug", base_dir=DIGITS_APP_DIR
        )
        t1 = time.perf_counter()
    history = result.history
    figures = {
        "mode": mode,
        "import_consortia_s": t_imported - _T_START,
        "simulate_s": t1 - t0,
        "round_s_median": median([float(r["seconds"]) for r in history]),
        "rounds": len(history),
        "failures": sum(int(r["failures"]) for r in history),
        "final_accuracy": float(history[-1]["accuracy"]),
        "final_loss": float(history[-1]["loss"]),
        "digest": result.digest,
    }
    result_path.write_text(json.dumps(figures))


def _one_run(script: str, mode: str, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="consortia-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, script, "--child", "--mode", mode, "--workers", str(workers)]
        m = measure([*cmd, "--result", str(result_file)])
        if m.returncode != 0:
            raise SystemExit(f"{mode} run failed with exit code {m.returncode}")
        child = json.loads(result_file.read_text())
    return {
        **child,
        "wall_s": m.wall_s,
        "peak_rss_mib": m.peak_rss / MIB,
        "peak_pss_mib": m.peak_pss / MIB,
        "peak_procs": m.peak_procs,
    }


def _summarise(w: Workload, runs: list[dict[str, Any]]) -> dict[str, Any]:
    ref = w.reference
    s: dict[str, Any] = {
        key: median([r[key] for r in runs])
        for key in (
            "wall_s",
            "peak_rss_mib",
            "peak_pss_mib",
            "import_consortia_s",
            "simulate_s",
            "round_s_median",
            "final_accuracy",
        )
    }
    s["runs"] = runs
    s["digests"] = sorted({r["digest"] for r in runs})
    s["ratios"] = {
        "wall": s["wall_s"] / ref.wall_s,
        "pss": s["peak_pss_mib"] / ref.pss_mib,
        "rss": s["peak_rss_mib"] / ref.rss_mib,
        "accuracy": s["final_accuracy"] / ref.accuracy,
    }
    targets = {"wall": s["wall_s"] <= ref.wall_s * w.wall_fraction}
    if w.pss_fraction is not None:
        targets["pss"] = s["peak_pss_mib"] <= ref.pss_mib * w.pss_fraction
    if w.accuracy_slack is not None:
        targets["accuracy"] = s["final_accuracy"] >= ref.accuracy - w.accuracy_slack
    s["targets_met"] = targets
    return s


def _print(w: Workload, mode: str, s: dict[str, Any], reps: int) -> None:
    ref, t = w.reference, s["targets_met"]
    print(
        f"\n{w.name} [{mode}] median of {reps}: "
        f"simulate() {s['simulate_s']:.2f} s, import consortia {s['import_consortia_s']:.2f} s, "
        f"median round {s['round_s_median'] * 1000:.0f} ms"
    )
    wall_target = f"<= {ref.wall_s * w.wall_fraction:.2f} s (1/{1 / w.wall_fraction:g})"
    print(ratio_line("wall", s["wall_s"], ref.wall_s, "s", wall_target, t["wall"]))
    pss_target = (
        f"<= {ref.pss_mib * w.pss_fraction:.0f} MiB (1/{1 / w.pss_fraction:g})"
        if w.pss_fraction is not None
        else "(none)"
    )
    print(
        ratio_line(
            "peak PSS", s["peak_pss_mib"], ref.pss_mib, "MiB", pss_target, t.get("pss", True)
        )
    )
    print(ratio_line("peak RSS", s["peak_rss_mib"], ref.rss_mib, "MiB", "(none)", True))
    acc_target = (
        f">= {ref.accuracy - w.accuracy_slack:.3f}" if w.accuracy_slack is not None else "(none)"
    )
    print(
        ratio_line(
            "accuracy", s["final_accuracy"], ref.accuracy, "", acc_target, t.get("accuracy", True)
        )
    )
    print(f"  final model digest(s): {', '.join(d[:16] for d in s['digests'])}")


def partition_check(w: Workload) -> str:
    """Compare our partition with the one Flower's reference run used, where that file exists.

    Run in the parent after all measurements (it imports torch through the example app)."""
    ref = Path(f"/work/shared/reference/flower/partition_digits_n{w.sites}_a0.5_seed0.npz")
    if not ref.is_file():
        return "not checked (no reference partition file)"
    import numpy as np

    from consortia.data import make_partition
    from consortia.task import load_app

    y_train = load_app("app.py", DIGITS_APP_DIR).load_data().y_train
    ours = make_partition("dirichlet", y_train, w.sites, 0, alpha=0.5)
    with np.load(ref) as z:
        same = all(np.array_equal(p, z[f"client_{i}"]) for i, p in enumerate(ours))
    return f"{'identical to' if same else 'DIFFERENT from'} {ref.name}"


def main(w: Workload, script: str, argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=f"The {w.name} benchmark (see docs/benchmarks.md).")
    ap.add_argument("--reps", type=int, default=3, help="runs per mode; medians are printed")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--workers", type=int, default=2, help="worker processes in parallel mode")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.mode is None or args.result is None:
            ap.error("--child needs --mode and --result")
        run_child(w, args.mode, args.workers, args.result)
        return
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    load_before = load_note()
    print(f"{w.name}: {args.reps} runs per mode, {load_before}", flush=True)
    for rep in range(args.reps):
        for mode in args.modes:  # interleaved, so that a noisy spell hits every mode alike
            r = _one_run(script, mode, args.workers)
            runs[mode].append(r)
            print(
                f"rep {rep + 1}/{args.reps} {mode:<8}: wall {r['wall_s']:.2f} s, "
                f"PSS {r['peak_pss_mib']:.0f} MiB, RSS {r['peak_rss_mib']:.0f} MiB, "
                f"accuracy {r['final_accuracy']:.4f}",
                flush=True,
            )
    summary = {m: _summarise(w, rs) for m, rs in runs.items()}
    for mode, s in summary.items():
        _print(w, mode, s, args.reps)
    load_after = load_note()
    print(f"\n{load_after} at the end")
    partition = partition_check(w)
    print(f"\npartition: {partition}")
    if args.json is not None:
        doc = {
            "workload": asdict(w),
            "reps": args.reps,
            "workers": args.workers,
            "partition": partition,
            "load": {"start": load_before, "end": load_after},
            "modes": summary,
        }
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.json}")
