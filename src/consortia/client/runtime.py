"""A site: its local data and trainer, answering the server's messages.

The same ``Site`` object answers in-process (debug fleet), in a worker process (pool
fleet) and behind ``consortia client`` (gRPC), so site code is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.client.trainers.base import Trainer
from consortia.core.messages import EvaluateIns, EvaluateRes, FitIns, FitRes, InvalidMessageError

if TYPE_CHECKING:  # the privacy stack (dp-accounting) loads only for jobs that use it
    from consortia.client.policy import SitePolicy


@dataclass
class SiteData:
    """A site's examples: a training part and an optional local evaluation part."""

    x_train: Any
    y_train: Any
    x_eval: Any = None
    y_eval: Any = None

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_eval(self) -> int:
        return 0 if self.y_eval is None else len(self.y_eval)


class Site:
    def __init__(
        self, site_id: str, trainer: Trainer, data: SiteData, policy: SitePolicy | None = None
    ) -> None:
        self.site_id = site_id
        self.trainer = trainer
        self.data = data
        self.policy = policy

    def handle(self, message: Any) -> FitRes | EvaluateRes:
        if isinstance(message, FitIns):
            return self.fit(message)
        if isinstance(message, EvaluateIns):
            return self.evaluate(message)
        raise InvalidMessageError(
            f"site {self.site_id}: unexpected message {type(message).__name__}"
        )

    def fit(self, ins: FitIns) -> FitRes:
        n = self.data.num_train
        if self.policy is not None:
            self.policy.check_fit(self.site_id, ins, n, ins.weights.size)
        if n == 0:
            # A site with no data contributes nothing (weight 0) rather than failing; under
            # distributed DP it must still add its share of the noise.
            delta = np.zeros_like(ins.weights)
            metrics: dict[str, float] = {}
        else:
            local, metrics = self.trainer.fit(
                ins.weights, self.data.x_train, self.data.y_train, ins.settings, ins.seed
            )
            delta = np.subtract(local, ins.weights, dtype=ins.weights.dtype)
        clip_bit = None
        if ins.privacy is not None:
            from consortia.client.stages import privatize

            delta, clip_bit = privatize(delta, ins.privacy, self.site_id, ins.round)
        return FitRes(self.site_id, ins.round, delta, n, metrics, clip_bit)

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        n = self.data.num_eval
        if n == 0:
            return EvaluateRes(self.site_id, ins.round, 0, {})
        metrics = self.trainer.evaluate(ins.weights, self.data.x_eval, self.data.y_eval)
        return EvaluateRes(self.site_id, ins.round, n, metrics)
