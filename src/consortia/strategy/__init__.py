"""Strategies as combinations: selection + aggregator + server optimiser (Reddi et al. 2021)."""

from consortia.strategy.aggregators import (
    Aggregator,
    AllUpdatesAggregator,
    MeanAggregator,
    RoundAggregate,
    StreamingMean,
    coordinate_median,
    mean,
    register_aggregator,
    weighted_mean,
)
from consortia.strategy.presets import Preset, Strategy, make_strategy
from consortia.strategy.selection import PoissonSelection, Selection, UniformSelection
from consortia.strategy.server_opt import (
    SGD,
    Adagrad,
    Adam,
    Momentum,
    ServerOptimizer,
    Yogi,
    make_server_optimizer,
)

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "Aggregator",
    "AllUpdatesAggregator",
    "MeanAggregator",
    "Momentum",
    "PoissonSelection",
    "Preset",
    "RoundAggregate",
    "Selection",
    "ServerOptimizer",
    "Strategy",
    "StreamingMean",
    "UniformSelection",
    "Yogi",
    "coordinate_median",
    "make_server_optimizer",
    "make_strategy",
    "mean",
    "register_aggregator",
    "weighted_mean",
]
