"""The built-in site: its local data and a trainer, answering fit and evaluate.

The same ``Site`` object answers in-process (debug fleet), in a worker process (pool
fleet) and behind ``consortia client`` (gRPC), so site code is written once. Its privacy
stages are middleware: the site's own policy is checked before any training, and the
update is clipped (and, under distributed DP, encoded with this site's noise share)
after it, on the way out, then masked when the round runs secure aggregation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.client.app import Handler, Middleware, SiteApp
from consortia.client.secure_aggregation import secure_aggregation
from consortia.client.trainers.base import Trainer
from consortia.core.join import JoinIns, JoinRes
from consortia.core.manifest import parse_manifest
from consortia.core.messages import EvaluateIns, EvaluateRes, FitIns, FitRes
from consortia.core.rng import derive_seed

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


def _update(trainer: Trainer, local: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """local - global, in ``local``'s own memory when the trainer hands it over (see
    ``Trainer``): for a large model that is one model-sized array per site less."""
    if (
        getattr(trainer, "returns_fresh_vectors", False)
        and local.dtype == weights.dtype
        and local.shape == weights.shape
        and local.flags.writeable
        and local.flags.c_contiguous
        and not np.shares_memory(local, weights)
    ):
        return np.subtract(local, weights, out=local)
    return np.subtract(local, weights, dtype=weights.dtype)


def policy_check(app: SiteApp, message: Any, call_next: Handler) -> Any:
    """Refuse a job (at join) or a round the site's own policy forbids, before any of its
    data is touched; a join the policy allows states the policy (``SitePolicy.join_reply``)."""
    policy = getattr(app, "policy", None)
    if policy is None:
        return call_next(message)
    today = dt.date.today()
    if isinstance(message, JoinIns):
        manifest = parse_manifest(message.manifest) if message.manifest else None
        policy.check_join(app.site_id, manifest, today)
        reply = call_next(message)
        # The site joins under this policy and says so: its digest and agreement go in
        # the ledger's site_joined entry.
        return policy.join_reply(reply) if isinstance(reply, JoinRes) else reply
    if isinstance(message, FitIns):
        data = getattr(app, "data", None)
        n = data.num_train if data is not None else 0
        manifest = getattr(app, "manifest", None)
        policy.check_fit(app.site_id, message, n, message.weights.size, manifest, today)
    return call_next(message)


def privatize_update(app: SiteApp, message: Any, call_next: Handler) -> Any:
    """Clip (central DP) or clip, round and add this site's noise share (distributed DP).

    Under DP the reply carries nothing else computed from the site's records: no training
    metrics (an exact loss on private data, never noised or accounted) and, under central
    and distributed DP, no example count (DP-FedAvg weighs every site equally, so the
    count is not needed). Local DP-SGD still sends its count: the server accounts each
    site's DP-SGD from it, and privacy.json lists it as outside the guarantee.
    """
    reply = call_next(message)
    if not isinstance(message, FitIns):
        return reply
    from consortia.privacy.mechanisms import round_mechanism

    mechanism = round_mechanism(message.privacy, message.settings)
    if mechanism is None:
        return reply
    seed = getattr(app, "noise_seed", None)
    return mechanism.privatize(reply, message.privacy, app.site_id, message.round, seed)


DEFAULT_MIDDLEWARE: tuple[Middleware, ...] = (policy_check, secure_aggregation, privatize_update)


class Site(SiteApp):
    """A trainer and local data: FedAvg-style fit and local evaluation."""

    def __init__(
        self,
        site_id: str,
        trainer: Trainer,
        data: SiteData,
        policy: SitePolicy | None = None,
        middleware: Sequence[Middleware] = DEFAULT_MIDDLEWARE,
        noise_seed: int | None = None,
    ) -> None:
        super().__init__(site_id, middleware)
        self.trainer = trainer
        self.data = data
        self.policy = policy
        # Simulation's reproducible runs only (``consortia client`` refuses to start with
        # it): the site's DP noise from this seed instead of its CSPRNG. The site's own
        # setting; nothing the server sends can turn it on.
        self.noise_seed = noise_seed

    def on_fit(self, ins: FitIns) -> FitRes:
        n = self.data.num_train
        if n == 0:
            # A site with no data contributes nothing (weight 0) rather than failing; under
            # distributed DP it must still add its share of the noise.
            return FitRes(self.site_id, ins.round, np.zeros_like(ins.weights), 0, {})
        settings, seed = replace(ins.settings, dp_seeded_noise=False), ins.seed
        seeded = self.noise_seed is not None and settings.local_dp
        if seeded:
            assert self.noise_seed is not None
            # DP-SGD's noise from the site's own seed, never from the server's fit seed.
            seed = derive_seed(self.noise_seed, "dp-sgd", ins.round, self.site_id)
            settings = replace(settings, dp_seeded_noise=True)
        local, metrics = self.trainer.fit(
            ins.weights, self.data.x_train, self.data.y_train, settings, seed
        )
        update = _update(self.trainer, local, ins.weights)
        return FitRes(self.site_id, ins.round, update, n, metrics, seeded_noise=seeded)

    def on_evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        n = self.data.num_eval
        if n == 0:
            return EvaluateRes(self.site_id, ins.round, 0, {})
        metrics = self.trainer.evaluate(ins.weights, self.data.x_eval, self.data.y_eval)
        return EvaluateRes(self.site_id, ins.round, n, metrics)

    # Kept for callers that trained a Site directly before handlers had names.
    def fit(self, ins: FitIns) -> FitRes:
        reply: FitRes = self.handle(ins)
        return reply

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        reply: EvaluateRes = self.handle(ins)
        return reply
