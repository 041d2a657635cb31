"""Registers the built-in aggregators: the streamed means and the robust rules.

The aggregator registry imports this module on first use; the robust rules live in their
own package, above the aggregator contract they implement, so the registration that
needs both is here rather than in either.
"""

from __future__ import annotations

from consortia.strategy.aggregators import MeanAggregator, register_aggregator
from consortia.strategy.robust.registered import ROBUST_AGGREGATORS, NormBoundedMean

register_aggregator(MeanAggregator(weighted=True))
register_aggregator(MeanAggregator(weighted=False))
for _aggregator in ROBUST_AGGREGATORS:
    register_aggregator(_aggregator)
register_aggregator(NormBoundedMean())
