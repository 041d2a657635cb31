"""ByzFL (EPFL) as the reference the robust rules and attacks are checked against.

``import byzfl`` runs the package's ``__init__``, which imports its benchmark and so
torchvision; PyPI's torchvision does not load beside the CPU build of torch this project
pins. The oracle therefore loads only the modules it needs (aggregators, pre-aggregators,
attacks: NumPy, SciPy and torch), under a bare ``byzfl`` package whose ``__init__`` does
not run.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def _package() -> None:
    if "byzfl" in sys.modules:
        return
    spec = importlib.util.find_spec("byzfl")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("byzfl is not installed: pip install -e '.[dev]' (it is the oracle)")
    pkg = types.ModuleType("byzfl")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = pkg


def module(name: str) -> Any:
    """``module("aggregators.aggregators")`` -> byzfl.aggregators.aggregators."""
    _package()
    return importlib.import_module(f"byzfl.{name}")


def aggregators() -> Any:
    return module("aggregators.aggregators")


def preaggregators() -> Any:
    return module("aggregators.preaggregators")


def attacks() -> Any:
    return module("attacks.attacks")
