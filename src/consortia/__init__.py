"""consortia: privacy-preserving collaborative learning.

The public API is what this module exports; everything else may move between releases.

    import consortia
    result = consortia.simulate("examples/digits/job.toml", rounds=5, out="runs/try")
    print(result.final_metrics["accuracy"], result.digest)

Extension points (see docs/extending.md): ``SiteApp`` (a site's handlers and state),
``Middleware``, ``register_kind`` (a new message kind), ``Step`` (a round step),
``register_aggregator`` / ``AllUpdatesAggregator`` (an aggregator that needs the sum only
or every update), and event subscribers (any callable taking an event).
"""

from __future__ import annotations

import importlib
from typing import Any

from consortia.client.app import Middleware, SiteApp
from consortia.client.runtime import Site, SiteData
from consortia.client.trainers.base import Trainer
from consortia.core.config import JobConfig, load_job
from consortia.core.dataset import Dataset
from consortia.core.errors import (
    ConfigError,
    ConsortiaError,
    ModelFileError,
    RoundFailedError,
    SpecMismatchError,
)
from consortia.core.events import (
    EventBus,
    LoopState,
    PhaseDone,
    PhaseRecord,
    RoundDone,
    RoundFailed,
    RoundRecord,
    RoundStarted,
    RunFinished,
    RunStarted,
    WaitingForSites,
)
from consortia.core.messages import (
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    InvalidMessageError,
    Reply,
    TrainSettings,
    register_kind,
)
from consortia.core.serialize import load_model, save_model
from consortia.core.spec import ModelSpec, model_digest
from consortia.fleet.base import Fleet, Timing

__version__ = "0.1.0"

# Loaded on first use: importing consortia must not pull in scikit-learn, torch,
# TensorBoard, the pool or gRPC for a site that only needs the core types.
_LAZY: dict[str, str] = {
    "simulate": "consortia.simulation",
    "SimulationResult": "consortia.simulation",
    "LinearModel": "consortia.client.trainers.sklearn",
    "SklearnTrainer": "consortia.client.trainers.sklearn",
    "TorchTrainer": "consortia.client.trainers.torch",
    "FunctionTrainer": "consortia.client.trainers.numpy",
    "register_framework": "consortia.client.trainers.frameworks",
    "Strategy": "consortia.strategy",
    "Selection": "consortia.strategy",
    "UniformSelection": "consortia.strategy",
    "PoissonSelection": "consortia.strategy",
    "Aggregator": "consortia.strategy",
    "RoundAggregate": "consortia.strategy",
    "MeanAggregator": "consortia.strategy",
    "AllUpdatesAggregator": "consortia.strategy",
    "register_aggregator": "consortia.strategy",
    "make_strategy": "consortia.strategy",
    "ServerOptimizer": "consortia.strategy",
    "DebugFleet": "consortia.fleet.debug",
    "PoolFleet": "consortia.fleet.pool",
    "register_fleet": "consortia.fleet.simulated",
    "GrpcFleet": "consortia.fleet.grpc",
    "run_site": "consortia.fleet.grpc",
    "Step": "consortia.server.workflow",
    "RoundContext": "consortia.server.workflow",
    "LoopSettings": "consortia.server.workflow",
    "Workflow": "consortia.server.workflow",
    "standard_steps": "consortia.server.workflow",
    "make_partition": "consortia.data",
    "load_app": "consortia.task",
    "parse_job": "consortia.core.config",
    "Deployment": "consortia.deployment",
    "DeployOptions": "consortia.deployment",
    "prepare_job": "consortia.deployment",
}

__all__ = [
    "ConfigError",
    "ConsortiaError",
    "Dataset",
    "EvaluateIns",
    "EvaluateRes",
    "EventBus",
    "Failure",
    "FitIns",
    "FitRes",
    "Fleet",
    "InvalidMessageError",
    "JobConfig",
    "LoopState",
    "Middleware",
    "ModelFileError",
    "ModelSpec",
    "PhaseDone",
    "PhaseRecord",
    "Reply",
    "RoundDone",
    "RoundFailed",
    "RoundFailedError",
    "RoundRecord",
    "RoundStarted",
    "RunFinished",
    "RunStarted",
    "Site",
    "SiteApp",
    "SiteData",
    "SpecMismatchError",
    "Timing",
    "TrainSettings",
    "Trainer",
    "WaitingForSites",
    "load_job",
    "load_model",
    "model_digest",
    "register_kind",
    "save_model",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'consortia' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
