"""Named components: one registry per kind of part a job file can name.

The job file names aggregators, strategy presets, server optimisers, simulation fleets
and frameworks by string; the names (and each part's defaults) live only here, where the
part registers itself, and job-file validation reads the same registry. A user's own
part is one ``register`` call away from being usable in a job file.

Registries live at the bottom of the package while the parts live higher up, so each
registry knows the module that registers its built-in parts and imports it on first use
(the plugin pattern of entry points): validation never sees a half-filled registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from consortia.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, builtins: str) -> None:
        self.what = what
        self._builtins = builtins
        self._items: dict[str, T] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtins)

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        """Add ``item`` under ``name``; an existing name is refused unless ``replace``."""
        self._load()
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{self.what} name {name!r}: use letters, digits, _ and -")
        if name in self._items and not replace and self._items[name] is not item:
            raise ConfigError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.what} {name!r}; choose from {', '.join(self.names())}"
            ) from None

    def check(self, name: str) -> str:
        """``name`` if registered, else a ValueError naming the choices (for validators)."""
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.what} {name!r}; choose from {', '.join(self.names())}")
        return name

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


AGGREGATORS: Registry[object] = Registry("aggregator", "consortia.strategy.builtins")
PRESETS: Registry[object] = Registry("strategy preset", "consortia.strategy.presets")
SERVER_OPTIMIZERS: Registry[object] = Registry("server optimiser", "consortia.strategy.server_opt")
FLEETS: Registry[object] = Registry("simulation fleet", "consortia.fleet.simulated")
FRAMEWORKS: Registry[object] = Registry("framework", "consortia.client.trainers.frameworks")
