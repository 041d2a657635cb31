"""Measuring a whole child process: wall time from spawn to exit and peak process-tree memory.

Benchmarks run each workload in a fresh child process, so that the figures include what a
user pays (interpreter start, imports, worker start-up) and so that one run's memory does
not leak into the next. Memory is sampled over the child *and all its descendants* (the
worker pool), because a framework that moves work into helper processes must not look
lighter for it:

- RSS summed over the tree double-counts pages the processes share (e.g. copy-on-write
  memory inherited through ``fork``), so it overstates;
- PSS (proportional set size) charges each shared page to its sharers in equal parts, so
  the sum over the tree is what the tree really occupies. PSS is the figure the targets use.

The sampler runs in a thread while the main thread waits on the child, so the wall time is
taken at the exact moment the child exits rather than at the next sampling tick.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

MIB = 2**20


@dataclass(frozen=True)
class Measurement:
    """One child run: exit code, wall seconds, peak tree RSS/PSS (bytes), peak process count."""

    returncode: int
    wall_s: float
    peak_rss: int
    peak_pss: int
    peak_procs: int
    samples: int


def _tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """(RSS, PSS, process count) summed over ``root`` and its descendants, now."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = pss = n = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()  # reads /proc/PID/smaps_rollup: has PSS
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a worker that exited between listing and reading
        rss += info.rss
        pss += info.pss
        n += 1
    return rss, pss, n


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True)
        self._root = psutil.Process(pid)
        self._interval = interval_s
        self._done = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_procs = self.samples = 0

    def run(self) -> None:
        while not self._done.is_set():
            rss, pss, n = _tree_memory(self._root)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, n)
            self.samples += 1
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def measure(cmd: Sequence[str], interval_s: float = 0.1, quiet: bool = False) -> Measurement:
    """Run ``cmd`` to completion, sampling the process tree's memory every ``interval_s``."""
    t0 = time.perf_counter()
    out = subprocess.DEVNULL if quiet else None  # quiet: neither stdout nor stderr
    proc = subprocess.Popen(list(cmd), stdout=out, stderr=out)
    sampler = _TreeSampler(proc.pid, interval_s)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop()
    return Measurement(
        rc, wall, sampler.peak_rss, sampler.peak_pss, sampler.peak_procs, sampler.samples
    )


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def ratio_line(name: str, ours: float, reference: float, unit: str, target: str, met: bool) -> str:
    """One printed comparison row: our figure, the reference, their ratio, the target."""
    return (
        f"  {name:<10} {ours:10.3f} {unit:<4} reference {reference:9.3f} {unit:<4} "
        f"ratio {ours / reference:6.3f}   target {target:<22} {'met' if met else 'NOT met'}"
    )


def load_note() -> str:
    """The 1-minute load average and core count, printed with every figure: on a shared
    machine a load above the core count means the timings are inflated by other work."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
