"""What a task's data function returns for simulation: a train split to divide among
virtual sites, and an optional test split the server evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from consortia.core.errors import ConfigError


@dataclass
class Dataset:
    x_train: Any
    y_train: np.ndarray
    x_test: Any = None
    y_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y_train = np.asarray(self.y_train)
        if len(self.x_train) != len(self.y_train):
            raise ConfigError(
                f"data: x_train has {len(self.x_train)} rows but y_train {len(self.y_train)}"
            )
        if (self.x_test is None) != (self.y_test is None):
            raise ConfigError("data: give both x_test and y_test, or neither")
        if self.y_test is not None:
            self.y_test = np.asarray(self.y_test)
            if len(self.x_test) != len(self.y_test):
                raise ConfigError(
                    f"data: x_test has {len(self.x_test)} rows but y_test {len(self.y_test)}"
                )

    @property
    def has_test(self) -> bool:
        return self.y_test is not None
