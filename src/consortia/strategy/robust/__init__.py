"""Robust aggregation: pure rules over stacked updates (``rules``), pre-aggregation steps
for non-IID data (``mixing``), and the aggregators a job file names (``registered``)."""

from consortia.strategy.robust.registered import (
    NormBoundedMean,
    RobustAggregator,
    RobustOptions,
)

__all__ = ["NormBoundedMean", "RobustAggregator", "RobustOptions"]
