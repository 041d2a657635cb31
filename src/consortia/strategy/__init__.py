"""Strategies as combinations: selection + aggregator + server optimiser (Reddi et al. 2021)."""

from consortia.strategy.aggregators import (
    Accumulator,
    Aggregator,
    StreamingMean,
    mean,
    weighted_mean,
)
from consortia.strategy.presets import PRESETS, Strategy, make_strategy
from consortia.strategy.selection import UniformSelection
from consortia.strategy.server_opt import (
    SGD,
    Adagrad,
    Adam,
    Momentum,
    ServerOptimizer,
    Yogi,
)

__all__ = [
    "PRESETS",
    "SGD",
    "Accumulator",
    "Adagrad",
    "Adam",
    "Aggregator",
    "Momentum",
    "ServerOptimizer",
    "Strategy",
    "StreamingMean",
    "UniformSelection",
    "Yogi",
    "make_strategy",
    "mean",
    "weighted_mean",
]
