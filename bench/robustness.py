"""Robustness: final accuracy for every attack x defence pair on the digits example.

The digits example (examples/digits: 100 sites, Dirichlet(0.5) label skew, 30 rounds of 10
sites, 10 local epochs) with 20% of the sites malicious and colluding. For each attack
(and no attack) and each defence (an aggregator, possibly with pre-aggregation steps) it
runs the job with 3 seeds (the job's and the attack's: which sites attack) and prints the
median final test accuracy, the backdoor's success rate on triggered test inputs, and what
the audit flagged: the share of the malicious sites (among those ever sampled) and of the
honest sites listed in the run summary.

Usage:
  python bench/robustness.py [--seeds 0 1 2] [--attacks ...] [--defences ...] [--json OUT]
  python bench/robustness.py --tiny      # 10 sites, 2 rounds, 2 attacks x 2 defences, 1 seed

The full grid is long (9 attacks x 13 defences x 3 seeds, each a 30-round run): run it on a
quiet machine; ``--attacks`` and ``--defences`` pick a slice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

ATTACKS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "label_flip": {"kind": "label_flip"},
    "sign_flip": {"kind": "sign_flip"},
    "scaling": {"kind": "scaling", "scale": 10.0},
    "gaussian": {"kind": "gaussian", "sigma": 1.0},
    "backdoor": {"kind": "backdoor", "target_label": 0, "poison_share": 0.5, "boost": 5.0},
    "alie": {"kind": "alie"},
    "ipm": {"kind": "ipm", "epsilon": 0.5},
    "mimic": {"kind": "mimic"},
}

# name -> (aggregator, options); f from f_fraction = 0.2 of each round's replies.
DEFENCES: dict[str, tuple[str, dict[str, Any]]] = {
    "mean": ("weighted_mean", {}),
    "median": ("median", {}),
    "trimmed_mean": ("trimmed_mean", {}),
    "krum": ("krum", {}),
    "multi_krum": ("multi_krum", {}),
    "bulyan": ("bulyan", {}),
    "geometric_median": ("geometric_median", {}),
    "centered_clipping": ("centered_clipping", {"tau": 1.0}),
    "norm_bounded_mean": ("norm_bounded_mean", {"max_norm": 1.0}),
    "fltrust": ("fltrust", {}),
    "nnm+trimmed_mean": ("trimmed_mean", {"pre": ["nnm"]}),
    "bucketing+krum": ("krum", {"pre": ["bucketing"]}),
    "arc+mean_cc": ("centered_clipping", {"tau": 1.0, "pre": ["arc"]}),
}


def job(
    attack: dict[str, Any] | None,
    defence: tuple[str, dict[str, Any]],
    seed: int,
    *,
    sites: int,
    rounds: int,
    per_round: int,
    workers: int,
) -> dict[str, Any]:
    aggregator, options = defence
    doc: dict[str, Any] = {
        "name": "robustness",
        "rounds": rounds,
        "seed": seed,
        "task": {"framework": "torch", "app": "_robust_app.py"},
        "train": {"local_epochs": 10, "batch_size": 16, "optimizer": "sgd", "lr": 0.05},
        "strategy": {
            "preset": "fedavg",
            "sites_per_round": per_round,
            "min_sites": 2,
            "deadline_s": 600,
            "aggregator": aggregator,
            "aggregator_options": dict(options),
            "tolerate_failing_sites": True,
        },
        "evaluation": {"central_every": rounds},
        "audit": {},
        "simulation": {
            "sites": sites,
            "workers": workers,
            "partition": {"method": "dirichlet", "alpha": 0.5, "seed": 0},
        },
    }
    if attack is not None:
        doc["simulation"]["attack"] = {**attack, "fraction": 0.2, "collude": True, "seed": seed}
    return doc


def run_one(doc: dict[str, Any], debug: bool) -> dict[str, Any]:
    import consortia
    from consortia.core.config import parse_job

    with tempfile.TemporaryDirectory(prefix="consortia-robust-") as tmp:
        t0 = time.perf_counter()
        try:
            result = consortia.simulate(
                parse_job(doc), base_dir=BENCH, out=Path(tmp) / "run", debug=debug
            )
        except consortia.RoundFailedError as exc:
            return {"error": str(exc)[:200], "seconds": time.perf_counter() - t0}
        seconds = time.perf_counter() - t0
        run_dir = Path(tmp) / "run"
        audited = {
            json.loads(line)["site"] for line in (run_dir / "audit.jsonl").read_text().splitlines()
        }
    last = result.history[-1]
    malicious = set(result.summary.get("malicious_sites", []))
    flagged = set(result.summary.get("audit_flagged", {}))
    bad_seen, good_seen = audited & malicious, audited - malicious
    return {
        "accuracy": float(last["accuracy"]),
        "backdoor_success": last.get("backdoor_success"),
        "flagged_malicious": len(flagged & bad_seen) / len(bad_seen) if bad_seen else None,
        "flagged_honest": len(flagged & good_seen) / len(good_seen) if good_seen else None,
        "seconds": seconds,
    }


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    ap.add_argument("--defences", nargs="+", choices=list(DEFENCES), default=list(DEFENCES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--debug", action="store_true", help="run sites in this process")
    ap.add_argument("--tiny", action="store_true", help="10 sites, 2 rounds: a smoke run")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--png", type=Path, help="draw the grid as a heat map (needs matplotlib)")
    ap.add_argument("--from-json", type=Path, help="draw --png from a grid written before")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        if args.png is None:
            ap.error("--from-json needs --png")
        heat_map(json.loads(args.from_json.read_text()), args.png)
        print(f"wrote {args.png}")
        return
    sites, rounds, per_round = (10, 2, 5) if args.tiny else (100, 30, 10)
    attacks = args.attacks if not args.tiny else ["none", "sign_flip"]
    defences = args.defences if not args.tiny else ["mean", "median"]
    seeds = args.seeds if not args.tiny else args.seeds[:1]
    cells: dict[str, dict[str, Any]] = {}
    for attack in attacks:
        for defence in defences:
            runs = []
            for seed in seeds:
                doc = job(
                    ATTACKS[attack],
                    DEFENCES[defence],
                    seed,
                    sites=sites,
                    rounds=rounds,
                    per_round=per_round,
                    workers=args.workers,
                )
                runs.append(run_one(doc, args.debug))
            cell = {
                key: _median([r.get(key) for r in runs])
                for key in ("accuracy", "backdoor_success", "flagged_malicious", "flagged_honest")
            }
            cell["errors"] = [r["error"] for r in runs if "error" in r]
            cell["runs"] = runs
            cells[f"{attack}/{defence}"] = cell
            print(
                f"{attack:>10} x {defence:<18} accuracy {_fmt(cell['accuracy'])}  "
                f"backdoor {_fmt(cell['backdoor_success'], True):>4}  "
                f"audit: malicious {_fmt(cell['flagged_malicious'], True):>4} "
                f"honest {_fmt(cell['flagged_honest'], True):>4}"
                + (f"  ({len(cell['errors'])} failed)" if cell["errors"] else ""),
                flush=True,
            )
    print(f"\nmedian final accuracy over seeds {seeds} ({sites} sites, {rounds} rounds)")
    print("attack \\ defence".ljust(12) + "".join(d[:12].rjust(13) for d in defences))
    for attack in attacks:
        row = [_fmt(cells[f"{attack}/{d}"]["accuracy"]) for d in defences]
        print(attack.ljust(12) + "".join(v.rjust(13) for v in row))
    grid = {"seeds": seeds, "sites": sites, "rounds": rounds, "cells": cells}
    if args.json is not None:
        args.json.write_text(json.dumps(grid, indent=1))
        print(f"\nwrote {args.json}")
    if args.png is not None:
        heat_map(grid, args.png)
        print(f"wrote {args.png}")


def heat_map(grid: dict[str, Any], path: Path) -> None:
    """Median final accuracy per attack (rows) and defence (columns); the backdoor row
    also gives the backdoor's median success rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = grid["cells"]
    attacks = list(dict.fromkeys(k.split("/")[0] for k in cells))
    defences = list(dict.fromkeys(k.split("/")[1] for k in cells))
    acc = [[cells[f"{a}/{d}"]["accuracy"] or 0.0 for d in defences] for a in attacks]
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * len(defences), 1.2 + 0.5 * len(attacks)), dpi=120)
    image = ax.imshow(acc, cmap="RdYlGn", vmin=0.4, vmax=1.0, aspect="auto")
    for i, a in enumerate(attacks):
        for j, d in enumerate(defences):
            cell = cells[f"{a}/{d}"]
            text = _fmt(cell["accuracy"])
            if cell.get("backdoor_success") is not None:
                text += f"\nbd {_fmt(cell['backdoor_success'], True)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(defences)), defences, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
    ax.set_title(
        f"digits, {grid['sites']} sites, 20% colluding attackers: median final accuracy of "
        f"{len(grid['seeds'])} seeds (bd: backdoor success)",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
