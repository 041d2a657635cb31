"""noise: how fast ``SecureRng`` (ChaCha20) draws Gaussian noise, against NumPy's PCG64.

Usage: ``python bench/noise.py [--size 10_000_000] [--reps 5]``.

DP noise must come from a cryptographic generator (docs/privacy.md, "Noise source"); this
prints what that costs: the median over ``--reps`` draws of ``--size`` standard normals from
``SecureRng.normal`` and, in the same run as the baseline, from ``numpy.random.default_rng``
(which privacy code never uses). The earlier unit-test bound, 10M Gaussians in under 3 s,
is the figure to compare with; a timed unit test fails on a busy machine, so it lives here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from consortia.privacy.rng import SecureRng


def _median_seconds(draw: object, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        draw()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10_000_000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    secure = SecureRng()
    pcg = np.random.default_rng()
    t_secure = _median_seconds(lambda: secure.normal(args.size), args.reps)
    t_pcg = _median_seconds(lambda: pcg.standard_normal(args.size), args.reps)
    print(f"noise: {args.size:,} standard normals, median of {args.reps}")
    print(f"  SecureRng (ChaCha20)  {t_secure:.3f} s  ({args.size / t_secure / 1e6:.1f} M/s)")
    print(f"  NumPy PCG64 baseline  {t_pcg:.3f} s  ({args.size / t_pcg / 1e6:.1f} M/s)")
    print(f"  ratio                 {t_secure / t_pcg:.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
