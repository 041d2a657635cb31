"""digits-100: 100 sites, Dirichlet(0.5), 30 rounds of 10 sites, 1 local epoch; see _digits.py.

Usage: ``python bench/digits100.py [--reps 3] [--modes parallel debug] [--json OUT]``.
Prints, per mode, the median whole-process wall time, peak process-tree PSS and RSS and the
final test accuracy, each as a ratio to Flower 1.42's figures on the same workload and
machine type, and whether the targets of issue 2 are met (accuracy no more than 1 point
lower, wall time at most 1/10, peak PSS at most 1/3).
"""

from __future__ import annotations

from _digits import Reference, Workload, main

DIGITS_100 = Workload(
    name="digits-100",
    sites=100,
    rounds=30,
    sites_per_round=10,
    # Flower 1.42 simulation engine (Ray), median of 3 (67-88 s; accuracy 0.717-0.794).
    reference=Reference(wall_s=71.8, pss_mib=1504.0, rss_mib=2122.0, accuracy=0.767),
    wall_fraction=1 / 10,
    pss_fraction=1 / 3,
    accuracy_slack=0.01,
)

if __name__ == "__main__":
    main(DIGITS_100, __file__)
