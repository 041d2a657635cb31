"""consortia: privacy-preserving collaborative learning.

The public API is what this module exports; everything else may move between releases.

    import consortia
    result = consortia.simulate("examples/digits/job.toml", rounds=5, out="runs/try")
    print(result.final_metrics["accuracy"], result.digest)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consortia.client.runtime import Site, SiteData
from consortia.core.config import JobConfig, load_job
from consortia.core.dataset import Dataset
from consortia.core.errors import (
    ConfigError,
    ConsortiaError,
    ModelFileError,
    RoundFailedError,
    SpecMismatchError,
)
from consortia.core.serialize import load_model, save_model
from consortia.core.spec import ModelSpec, model_digest

if TYPE_CHECKING:
    from consortia.client.trainers.sklearn import LinearModel
    from consortia.simulation import SimulationResult, simulate

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConsortiaError",
    "Dataset",
    "JobConfig",
    "LinearModel",
    "ModelFileError",
    "ModelSpec",
    "RoundFailedError",
    "SimulationResult",
    "Site",
    "SiteData",
    "SpecMismatchError",
    "load_job",
    "load_model",
    "model_digest",
    "save_model",
    "simulate",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing consortia must not pull in scikit-learn, TensorBoard or the pool
    # machinery for a site that only needs the core types.
    if name in ("simulate", "SimulationResult"):
        from consortia import simulation

        return getattr(simulation, name)
    if name == "LinearModel":
        from consortia.client.trainers.sklearn import LinearModel

        return LinearModel
    raise AttributeError(f"module 'consortia' has no attribute {name!r}")
