"""Loading a job's task: the user's app module, its model factory, data and trainer.

A task reference is a Python file relative to the job file (``app.py``) or an importable
module (``mypkg.task``); functions are looked up by name in it. Framework imports happen
here, lazily, so a scikit-learn job never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from consortia.client.trainers.base import Trainer
from consortia.client.trainers.frameworks import TrainerBuilder, app_function
from consortia.core.config import JobConfig, TaskConfig, aggregator_from_config, parse_job, read_job
from consortia.core.dataset import Dataset
from consortia.core.errors import ConfigError
from consortia.core.registry import FRAMEWORKS

__all__ = [
    "app_function",
    "app_hook",
    "build_trainer",
    "load_app",
    "load_dataset",
    "load_job_with_app",
]


def load_app(ref: str, base_dir: Path) -> ModuleType:
    """An app file (relative to ``base_dir``) or an importable module, imported once.

    A file is imported with its own folder importable (first on ``sys.path``, as Flower
    does for its apps), so an app can import the modules next to it without PYTHONPATH.
    """
    if ref.endswith(".py"):
        path = (base_dir / ref).resolve()
        if not path.is_file():
            raise ConfigError(f"task.app: no such file {path}")
        name = f"consortia_app_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        if name in sys.modules:
            return sys.modules[name]
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # a half-imported app must not be served next time
            raise
        return module
    try:
        return importlib.import_module(ref)
    except ImportError as exc:
        raise ConfigError(f"task.app: cannot import module {ref!r} ({exc})") from None


def load_job_with_app(path: str | Path) -> JobConfig:
    """Read a job file after importing its task's app: an app that registers an aggregator,
    a message kind or a framework can then be named by that name in the same file."""
    path = Path(path)
    data = read_job(path)
    task = data.get("task")
    if isinstance(task, dict) and isinstance(task.get("app"), str):
        # A missing app is reported when the task is built; the file's own errors first.
        with contextlib.suppress(ConfigError):
            load_app(task["app"], path.parent)
    return parse_job(data, str(path))


def app_hook(task: TaskConfig, base_dir: Path, field: str) -> Callable[..., Any] | None:
    """The app function a [task] field names (``site``, ``workflow``), or None if unset."""
    name = getattr(task, field)
    if name is None:
        return None
    return app_function(load_app(task.app, base_dir), name, field)


def build_trainer(task: TaskConfig, base_dir: Path) -> Trainer:
    builder: TrainerBuilder = FRAMEWORKS.get(task.framework)  # type: ignore[assignment]
    return builder(load_app(task.app, base_dir), task)


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


def load_root_data(job: JobConfig, base_dir: Path) -> tuple[Any, Any] | None:
    """The server's root data set, if the job's aggregator names one (FLTrust's ``root``
    option): the app function it names returns a Dataset (its training split) or (x, y)."""
    name = getattr(aggregator_from_config(job.strategy), "root_data", None)
    if name is None:
        return None
    fn = getattr(load_app(job.task.app, base_dir), name, None)
    field = "strategy.aggregator_options.root"
    if not callable(fn):
        raise ConfigError(f"{field}: the task's app has no function {name!r} (the root data)")
    data = fn()
    if isinstance(data, Dataset):
        return data.x_train, data.y_train
    if isinstance(data, tuple) and len(data) == 2:
        return data[0], data[1]
    raise ConfigError(f"{field}: {name}() must return consortia.Dataset or (x, y)")
