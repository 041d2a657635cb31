"""aggregate: the weighted mean of 100 updates of 10M float32 parameters (4 GB of inputs).

Usage: ``python bench/aggregate.py [--reps 5] [--json OUT] [--flower-json W2.json]``.

Times, in one process, on the same data and interleaved rep by rep (so that a noisy spell
on a shared machine hits every method alike):

- ``copy``: ``np.copyto`` of every update into one preallocated buffer. It reads the same
  4 GB the mean must read, so it is this machine's memory-bandwidth reference: a mean that
  reads each input once cannot be much faster, and one that is slower is wasting passes;
- ``weighted_mean``: consortia's blocked mean over updates already in memory;
- ``StreamingMean``: consortia's accumulator fed one update at a time, as the round loop
  feeds it replies;
- ``weighted_mean/1`` and ``StreamingMean/1``: the same with OpenBLAS held to one thread
  (``threadpoolctl``), to show what BLAS's own threading costs or gains on this machine.

Extra memory is what each call needs beyond its inputs: a thread samples this process's RSS
every 2 ms during the call, and the peak minus the RSS at the start is expressed in model
copies (one copy = one update, 40 MB). Each result is checked against a float64 mean.

The data are those of Flower's reference script (``w2_aggregate.py``): ``default_rng(0)``,
per update 10M standard normals (drawn there as 4 arrays of 2.5M, the same stream), then the
100 example counts from ``rng.integers(1, 1000)``. Flower's ``aggregate`` took 5.07 s there
where the copy took 0.89 s; the ratio to that copy calibrates for the machine, so our
speed-up over Flower is quoted as (5.07 / 0.89) / (ours / our copy). ``--flower-json`` takes
the JSON written by ``w2_aggregate.py --out`` in the same sitting and uses its figures
instead.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from _measure import load_note
from consortia.strategy.aggregators import StreamingMean, weighted_mean

PROC = psutil.Process()
MB = 1e6

# Flower 1.42 on the reference machine (shared/reference/flower/README.md).
FLOWER_AGGREGATE_S = 5.07
FLOWER_COPY_S = 0.89
FLOWER_EXTRA_MB = 3900.0


class PeakRSS:
    """Peak RSS of this process while the ``with`` block runs, sampled every 2 ms."""

    def __init__(self) -> None:
        self.start = self.peak = PROC.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, PROC.memory_info().rss)
            self._done.wait(0.002)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, PROC.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.start


def make_data(n: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(size, dtype=np.float32) for _ in range(n)]
    counts = rng.integers(1, 1000, size=n)
    return updates, counts


def float64_mean(updates: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """The exact-enough reference: every product and sum in float64, block by block."""
    w = counts.astype(np.float64) / counts.sum()
    size, block = updates[0].size, 1 << 20
    out = np.zeros(size, dtype=np.float64)
    for start in range(0, size, block):
        acc = out[start : start + block]
        for u, wi in zip(updates, w, strict=True):
            acc += wi * u[start : start + block].astype(np.float64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per method; medians")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--flower-json", type=Path, help="w2_aggregate.py's --out from this sitting")
    args = ap.parse_args()

    print(f"aggregate: {load_note()}", flush=True)
    t0 = time.perf_counter()
    updates, counts = make_data(args.updates, args.params)
    model_bytes = updates[0].nbytes
    input_bytes = model_bytes * len(updates)
    print(
        f"generated {len(updates)} updates x {args.params:,} float32 = "
        f"{input_bytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    reference = float64_mean(updates, counts)
    weights = [float(c) for c in counts]

    copy_dst = np.empty(args.params, dtype=np.float32)
    copy_dst.fill(0)  # touch its pages now: the copy's buffer is preallocated, not timed

    def copy() -> np.ndarray:
        for u in updates:
            np.copyto(copy_dst, u)
        return copy_dst

    def streaming() -> np.ndarray:
        acc = StreamingMean(args.params, np.dtype(np.float32))
        for u, c in zip(updates, weights, strict=True):
            acc.add(u, c)
        return acc.result()

    methods: dict[str, Callable[[], np.ndarray]] = {
        "copy": copy,
        "weighted_mean": lambda: weighted_mean(updates, weights),
        "StreamingMean": streaming,
        "weighted_mean/1": lambda: weighted_mean(updates, weights),
        "StreamingMean/1": streaming,
    }
    # Warm-up on a few small slices: the first BLAS call loads and initialises the library,
    # which is a one-off start-up cost and not part of aggregating.
    small = [u[:4096] for u in updates[:4]]
    weighted_mean(small, weights[:4])
    warm = StreamingMean(4096, np.dtype(np.float32))
    for u, c in zip(small, weights[:4], strict=True):
        warm.add(u, c)
    warm.result()
    raw: dict[str, dict[str, list[float]]] = {m: {"s": [], "extra": []} for m in methods}
    errors: dict[str, float] = {}
    for rep in range(args.reps):
        for name, fn in methods.items():
            # "/1": OpenBLAS held to one thread (set outside the timed call). By default it
            # splits each axpy over both vCPUs, which on a busy 2-vCPU machine costs more in
            # waiting for the second thread than a memory-bound loop can gain from it.
            limit = threadpool_limits(limits=1, user_api="blas") if name.endswith("/1") else None
            with PeakRSS() as peak:
                t = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t
            raw[name]["s"].append(dt)
            raw[name]["extra"].append(float(peak.extra))
            if name != "copy":
                err = float(np.max(np.abs(out.astype(np.float64) - reference)))
                errors[name] = max(errors.get(name, 0.0), err)
            del out
            if limit is not None:
                limit.restore_original_limits()
        print(
            f"rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{m} {raw[m]['s'][-1]:.3f} s" for m in methods),
            flush=True,
        )

    flower_s, flower_copy_s, flower_extra = FLOWER_AGGREGATE_S, FLOWER_COPY_S, FLOWER_EXTRA_MB
    flower_source = "reference figures (shared/reference/flower/README.md)"
    if args.flower_json is not None:
        doc = json.loads(args.flower_json.read_text())["results"]
        flower_s = doc["flwr_aggregate"]["median_s"]
        flower_copy_s = doc["numpy_copy"]["median_s"]
        flower_extra = doc["flwr_aggregate"]["peak_increase_mib"] * 2**20 / MB
        flower_source = f"measured in this sitting ({args.flower_json})"
    flower_per_copy = flower_s / flower_copy_s

    copy_s = float(np.median(raw["copy"]["s"]))
    summary: dict[str, Any] = {}
    print(f"{load_note()} at the end")
    print(
        f"\ninputs {input_bytes / 1e9:.2f} GB; one model copy = {model_bytes / MB:.0f} MB; "
        f"medians of {args.reps}; Flower: {flower_source}"
    )
    print(f"  copy            {copy_s:7.3f} s  ({input_bytes / copy_s / 1e9:5.1f} GB/s read)")
    summary["copy"] = {"median_s": copy_s, "times_s": raw["copy"]["s"]}
    for name in ("weighted_mean", "StreamingMean", "weighted_mean/1", "StreamingMean/1"):
        s = float(np.median(raw[name]["s"]))
        extra = float(np.median(raw[name]["extra"]))
        per_copy = s / copy_s
        speedup = flower_per_copy / per_copy
        copies = extra / model_bytes
        targets = {
            "no slower than copy": s <= copy_s,
            ">= 4x Flower": speedup >= 4,
            "<= 2 model copies": copies <= 2,
        }
        summary[name] = {
            "median_s": s,
            "times_s": raw[name]["s"],
            "ratio_to_copy": per_copy,
            "speedup_vs_flower": speedup,
            "extra_mb": extra / MB,
            "extra_model_copies": copies,
            "max_abs_error_vs_float64": errors[name],
            "targets_met": targets,
        }
        print(
            f"  {name:<15} {s:7.3f} s  {per_copy:5.2f} x copy   {speedup:4.1f} x faster "
            f"than Flower   extra {extra / MB:6.0f} MB = {copies:4.2f} copies   "
            f"max |error| vs float64 {errors[name]:.1e}"
        )
        print(
            "      targets: "
            + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items())
        )
    print(
        f"  Flower          {flower_s:7.3f} s  {flower_per_copy:5.2f} x its copy   "
        f"extra {flower_extra:6.0f} MB = {flower_extra * MB / model_bytes:5.1f} copies"
    )
    if args.json is not None:
        doc_out = {
            "updates": args.updates,
            "params": args.params,
            "reps": args.reps,
            "input_bytes": input_bytes,
            "load_at_end": load_note(),
            "flower": {
                "aggregate_s": flower_s,
                "copy_s": flower_copy_s,
                "extra_mb": flower_extra,
                "source": flower_source,
            },
            "results": summary,
        }
        args.json.write_text(json.dumps(doc_out, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
