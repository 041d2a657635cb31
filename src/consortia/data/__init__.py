"""Data helpers for simulated federations: split one data set into per-site index sets."""

from consortia.data.partition import (
    dirichlet,
    iid,
    label_histograms,
    make_partition,
    quantity_skew,
    shards,
)

__all__ = [
    "dirichlet",
    "iid",
    "label_histograms",
    "make_partition",
    "quantity_skew",
    "shards",
]
