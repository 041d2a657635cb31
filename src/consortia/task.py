"""Loading a job's task: the user's app module, its model factory, data and trainer.

A task reference is a Python file relative to the job file (``app.py``) or an importable
module (``mypkg.task``); functions are looked up by name in it. Framework imports happen
here, lazily, so a scikit-learn job never imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from consortia.client.trainers.base import Trainer
from consortia.core.config import TaskConfig
from consortia.core.dataset import Dataset
from consortia.core.errors import ConfigError


def load_app(ref: str, base_dir: Path) -> ModuleType:
    if ref.endswith(".py"):
        path = (base_dir / ref).resolve()
        if not path.is_file():
            raise ConfigError(f"task.app: no such file {path}")
        name = f"consortia_app_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(ref)
    except ImportError as exc:
        raise ConfigError(f"task.app: cannot import module {ref!r} ({exc})") from None


def app_function(module: ModuleType, name: str, field: str) -> Callable[..., Any]:
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"task.{field}: {module.__name__} has no function {name!r}")
    return fn


def build_trainer(task: TaskConfig, base_dir: Path) -> Trainer:
    app = load_app(task.app, base_dir)
    if task.framework == "torch":
        from consortia.client.trainers.torch import TorchTrainer

        return TorchTrainer(app_function(app, task.model, "model"), loss=task.loss)
    if task.framework == "sklearn":
        from consortia.client.trainers.sklearn import SklearnTrainer

        return SklearnTrainer(app_function(app, task.model, "model"))
    from consortia.client.trainers.numpy import FunctionTrainer

    return FunctionTrainer(
        app_function(app, task.model, "model"),
        app_function(app, task.fit, "fit"),
        app_function(app, task.evaluate, "evaluate"),
    )


def load_dataset(task: TaskConfig, base_dir: Path) -> Dataset:
    data = app_function(load_app(task.app, base_dir), task.data, "data")()
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) in (2, 4):
        return Dataset(*data)
    raise ConfigError(
        f"task.data: {task.data}() must return consortia.Dataset or "
        "(x_train, y_train[, x_test, y_test])"
    )
