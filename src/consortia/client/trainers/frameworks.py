"""The frameworks a job's ``task.framework`` can name: each builds a Trainer from the app.

A builder takes the task's app module and its [task] settings. Framework imports happen
inside the builders, so a scikit-learn job never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from consortia.client.trainers.base import Trainer
from consortia.core.errors import ConfigError
from consortia.core.registry import FRAMEWORKS

TrainerBuilder = Callable[[ModuleType, Any], Trainer]


def app_function(module: ModuleType, name: str, field: str) -> Callable[..., Any]:
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"task.{field}: {module.__name__} has no function {name!r}")
    return fn


def _torch(app: ModuleType, task: Any) -> Trainer:
    from consortia.client.trainers.torch import TorchTrainer

    return TorchTrainer(app_function(app, task.model, "model"), loss=task.loss)


def _sklearn(app: ModuleType, task: Any) -> Trainer:
    from consortia.client.trainers.sklearn import SklearnTrainer

    return SklearnTrainer(app_function(app, task.model, "model"))


def _numpy(app: ModuleType, task: Any) -> Trainer:
    from consortia.client.trainers.numpy import FunctionTrainer

    return FunctionTrainer(
        app_function(app, task.model, "model"),
        app_function(app, task.fit, "fit"),
        app_function(app, task.evaluate, "evaluate"),
    )


def register_framework(name: str, builder: TrainerBuilder, *, replace: bool = False) -> None:
    FRAMEWORKS.register(name, builder, replace=replace)


register_framework("torch", _torch)
register_framework("sklearn", _sklearn)
register_framework("numpy", _numpy)
