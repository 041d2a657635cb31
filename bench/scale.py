"""scale: 1000 sites, Dirichlet(0.5), 10 rounds of 50 sites, 1 local epoch; see _digits.py.

Usage: ``python bench/scale.py [--reps 3] [--modes parallel debug] [--json OUT]``.
With 1000 sites the partition leaves some sites with no examples (they reply with weight 0,
as in Flower's run). Target of issue 2: whole-process wall time at most 1/10 of Flower's;
memory and accuracy are printed as ratios without a target.
"""

from __future__ import annotations

from _digits import Reference, Workload, main

SCALE_1000 = Workload(
    name="scale-1000",
    sites=1000,
    rounds=10,
    sites_per_round=50,
    # Flower 1.42 simulation engine (Ray), median of 3.
    reference=Reference(wall_s=54.2, pss_mib=1516.0, rss_mib=2132.0, accuracy=0.456),
    wall_fraction=1 / 10,
)

if __name__ == "__main__":
    main(SCALE_1000, __file__)
