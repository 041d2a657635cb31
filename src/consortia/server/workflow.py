"""A round is a list of steps: fit -> server update -> central evaluation -> federated
evaluation, built from the job; secure aggregation and other protocols insert their own.

A step is any object with a ``name`` and ``run(ctx)``. It talks to sites through
``ctx.exchange`` (one phase: a message to each of some sites, their checked replies), and
hands results to later steps through ``ctx`` (``ctx.values`` for anything of its own).
Strategies supply parts to the steps; they never own the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from consortia.client.trainers.base import Trainer
from consortia.core.errors import RoundFailedError
from consortia.core.events import LoopState, PhaseDone, PhaseRecord, RoundRecord, State
from consortia.core.messages import (
    ClientPrivacy,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    SecureInput,
    TrainSettings,
)
from consortia.core.rng import derive_seed
from consortia.core.spec import ModelSpec, all_finite
from consortia.fleet.base import Fleet
from consortia.server.audit import Auditor
from consortia.server.phases import Phase, run_phase
from consortia.server.validation import ValidatingSink
from consortia.strategy.aggregators import FitSink
from consortia.strategy.presets import Strategy
from consortia.strategy.robust.registered import ROOT_UPDATE
from consortia.strategy.selection import UniformSelection

if TYPE_CHECKING:
    from consortia.server.privacy import PrivacyController
    from consortia.server.provenance import Provenance

log = logging.getLogger(__name__)

CentralEval = Callable[[np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class LoopSettings:
    rounds: int
    seed: int = 0
    fit_deadline_s: float = 600.0
    min_fit_replies: int = 1
    central_every: int = 1
    federated_every: int = 0
    federated_selection: UniformSelection | None = None
    evaluate_deadline_s: float = 600.0
    min_evaluate_replies: int = 1
    grace_s: float | None = 3.0
    job_id: str = ""  # sent with each fit request: the sites sign it with their update


@dataclass
class RoundContext:
    """One round in progress: what steps read and write."""

    number: int
    state: LoopState  # as the round started
    fleet: Fleet
    spec: ModelSpec
    settings: LoopSettings
    publish: Callable[[Any], None] = lambda event: None
    weights: np.ndarray | None = None  # the new global model, once a step has made it
    optimizer_state: State | None = None
    aggregator_state: State | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    phases: list[PhaseRecord] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    selected: int = 0
    fit_replies: int = 0
    worst_site: str | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)
    participation_private: bool = False  # a DP round: see RoundRecord.public_json

    @property
    def model(self) -> np.ndarray:
        """The latest global model: the new one after the server update, else the old one."""
        return self.state.weights if self.weights is None else self.weights

    def exchange(
        self,
        name: str,
        requests: Sequence[tuple[str, Any]],
        accept: Callable[[str, Any], None],
        *,
        min_replies: int = 0,
        deadline_s: float | None = None,
        settle: Callable[[PhaseRecord], None] | None = None,
        wait_for: int = 0,
    ) -> PhaseRecord:
        """Run one phase; its record is kept in the round whether it succeeds or not.

        The phase ends when every request is answered, or ``min_replies`` replies are in and
        the job's grace period has passed (``wait_for`` replies, if more), or after
        ``deadline_s`` (default: the job's fit deadline). Too few accepted replies raise
        RoundFailedError. ``settle`` may still refuse replies once all are in (the record
        is published after it).
        """
        record = PhaseRecord(name, [s for s, _ in requests])
        self.phases.append(record)
        phase = Phase(
            name,
            self.number,
            requests,
            self.settings.fit_deadline_s if deadline_s is None else deadline_s,
            min_replies,
            self.settings.grace_s,
            wait_for,
        )
        run_phase(self.fleet, phase, accept, record)
        if settle is not None:  # decisions that needed every reply, before anyone hears
            settle(record)
        self.publish(PhaseDone(self.number, record))
        return record

    def new_state(self) -> LoopState:
        return LoopState(
            self.number,
            self.model,
            self.state.optimizer_state if self.optimizer_state is None else self.optimizer_state,
            self.state.aggregator_state if self.aggregator_state is None else self.aggregator_state,
        )

    def record(self, seconds: float) -> RoundRecord:
        failures = [f for p in self.phases for f in p.failures]
        return RoundRecord(
            self.number,
            self.selected,
            self.fit_replies,
            failures,
            seconds,
            self.metrics,
            self.worst_site,
            list(self.phases),
            self.audit,
            self.participation_private,
        )


class Step(Protocol):
    name: str

    def run(self, ctx: RoundContext) -> None: ...


def fit_request(
    ctx: RoundContext,
    site: str,
    train: TrainSettings,
    privacy: ClientPrivacy | None,
    sites: int,
    secagg: SecureInput | None = None,
) -> FitIns:
    """One site's fit request: the model, its training seed (derived, so the same in any
    fleet), the round's privacy instructions, how many sites the round asks, the job id."""
    s = ctx.settings
    return FitIns(
        ctx.number,
        ctx.model,
        train,
        derive_seed(s.seed, "fit", ctx.number, site),
        privacy,
        sites=sites,
        job=s.job_id or None,
        secagg=secagg,
    )


def weighted_metrics(
    values: Sequence[tuple[int, dict[str, float]]], prefix: str
) -> dict[str, float]:
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in values:
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + n * v
            weights[k] = weights.get(k, 0.0) + n
    return {f"{prefix}{k}": totals[k] / weights[k] for k in totals if weights[k] > 0}


def _distribution(
    per_site: dict[str, tuple[int, dict[str, float]]],
) -> tuple[dict[str, float], str | None]:
    """Min / median / max of each federated metric over sites, and the worst site by accuracy."""
    out: dict[str, float] = {}
    keys = {k for _, m in per_site.values() for k in m}
    for k in sorted(keys):
        vals = np.array([m[k] for n, m in per_site.values() if k in m and n > 0])
        if vals.size:
            out[f"federated_{k}_min"] = float(vals.min())
            out[f"federated_{k}_median"] = float(np.median(vals))
            out[f"federated_{k}_max"] = float(vals.max())
    scored = [(m["accuracy"], s) for s, (n, m) in per_site.items() if n > 0 and "accuracy" in m]
    return out, (min(scored)[1] if scored else None)


@dataclass
class FitStep:
    """Select sites, send them the model, stream their checked updates into the aggregator
    (wrapped by the job's privacy mechanism); leaves the aggregate in ``ctx.values``."""

    strategy: Strategy
    privacy: PrivacyController | None = None
    audit: Auditor | None = None
    provenance: Provenance | None = None  # the ledger's recorder: checks site signatures
    name: str = "fit"
    # The median weight (claimed examples) of the last completed fit: the reference for
    # the next round's weight cap (strategy/validation.py says why not this round's).
    _median_weight: float | None = field(default=None, init=False, repr=False)

    def run(self, ctx: RoundContext) -> None:
        s, dp, rnd = ctx.settings, self.privacy, ctx.number
        if dp is not None:
            ctx.participation_private = True
            dp.before_round(rnd)  # raises BudgetExhausted before anything is sent
        prov = self.provenance
        if prov is not None:
            prov.begin_round()
        chosen = self.strategy.selection.select(ctx.fleet.sites(), rnd, s.seed)
        train = dp.train_settings(self.strategy.train) if dp else self.strategy.train
        instructions = dp.client_privacy() if dp else None
        requests = [
            (site, fit_request(ctx, site, train, instructions, len(chosen))) for site in chosen
        ]
        agg, dtype = self.strategy.aggregator, ctx.spec.vector_dtype
        # A step before this one may have added to the state for this round (the root update)
        state = ctx.state.aggregator_state if ctx.aggregator_state is None else ctx.aggregator_state
        sink = (
            dp.begin_round(agg, dtype, state)
            if dp
            else FitSink(agg.begin(ctx.spec.size, dtype, state))
        )
        tee = self.audit.tee(sink) if self.audit is not None else None
        checked = ValidatingSink(
            tee or sink, self.strategy.validation, self._median_weight, cap_weights=dp is None
        )
        fit_metrics: dict[str, tuple[int, dict[str, float]]] = {}

        def accept(site: str, res: FitRes) -> None:
            if prov is not None:
                prov.check_update(site, res, rnd)  # a bad signature: refused, never summed
            checked.add(res)
            fit_metrics[site] = (res.num_examples, res.metrics)

        min_replies = s.min_fit_replies if dp is None else dp.min_replies
        record = ctx.exchange(
            "fit",
            requests,
            accept,
            min_replies=min_replies,
            deadline_s=s.fit_deadline_s,
            settle=lambda rec: _refuse_late(rec, checked.settle(), min_replies, rnd),
        )
        ctx.selected, ctx.fit_replies = len(chosen), len(record.accepted)
        try:
            aggregate, ctx.aggregator_state = sink.result()
        except RoundFailedError as exc:
            raise RoundFailedError(f"round {rnd}: {exc}") from None
        if prov is not None:
            prov.aggregate(aggregate)
        if checked.claimed:
            self._median_weight = float(np.median(checked.claimed))
        if checked.capped:
            ctx.metrics["capped_weights"] = float(len(checked.capped))
        ctx.values.update(aggregate=aggregate, fit_sink=sink, train_settings=train)
        if self.audit is not None and tee is not None:
            ctx.audit = self.audit.audit(rnd, tee.updates, aggregate)
        if dp is None:  # under DP an unnoised training metric is never published
            kept = [fit_metrics[site] for site in record.accepted]
            ctx.metrics.update(weighted_metrics(kept, "train_"))


def _refuse_late(record: PhaseRecord, refused: list[Failure], min_replies: int, rnd: int) -> None:
    """Updates refused once the whole round was in (the relative norm bound) leave the
    accepted list for the failures, and may leave the phase short of its minimum."""
    if not refused:
        return
    gone = {f.site for f in refused}
    record.accepted = [s for s in record.accepted if s not in gone]
    record.failures.extend(refused)
    for f in refused:
        log.warning("round %d fit: refused update of %s: %s", rnd, f.site, f.reason)
    if len(record.accepted) < min_replies:
        raise RoundFailedError(
            f"round {rnd} fit: {len(record.accepted)} updates left after validation, "
            f"at least {min_replies} needed ({refused[0].site}: {refused[0].reason})"
        )


@dataclass
class RootUpdateStep:
    """FLTrust (Cao et al. 2021): the server trains on its own small root data set from the
    global model, and hands that update to the aggregator, in its state for this round
    only, as the direction it trusts."""

    trainer: Trainer
    root: tuple[Any, Any]  # (x, y)
    train: TrainSettings
    name: str = "root_update"

    def run(self, ctx: RoundContext) -> None:
        seed = derive_seed(ctx.settings.seed, "root", ctx.number)
        trained, _ = self.trainer.fit(ctx.model, self.root[0], self.root[1], self.train, seed)
        update = np.asarray(trained, np.float64) - np.asarray(ctx.model, np.float64)
        ctx.aggregator_state = {**ctx.state.aggregator_state, ROOT_UPDATE: update}


@dataclass
class ServerUpdateStep:
    """The server optimiser applies the aggregate; under DP, the release is accounted."""

    strategy: Strategy
    privacy: PrivacyController | None = None
    name: str = "server_update"

    def run(self, ctx: RoundContext) -> None:
        weights, ctx.optimizer_state = self.strategy.server_optimizer.step(
            ctx.state.optimizer_state, ctx.state.weights, ctx.values["aggregate"]
        )
        if not all_finite(weights):
            raise RoundFailedError(
                f"round {ctx.number}: the new global model is not finite (diverged)"
            )
        ctx.weights = weights
        if self.privacy is not None:
            ctx.metrics.update(
                self.privacy.end_round(
                    ctx.number, ctx.values["fit_sink"], ctx.values["train_settings"]
                )
            )


@dataclass
class CentralEvalStep:
    """The server's own test set, every ``central_every`` rounds and after the last."""

    evaluate: CentralEval
    name: str = "central_evaluation"

    def run(self, ctx: RoundContext) -> None:
        s = ctx.settings
        if s.central_every > 0 and (ctx.number % s.central_every == 0 or ctx.number == s.rounds):
            ctx.metrics.update(self.evaluate(ctx.model))


@dataclass
class FederatedEvalStep:
    """A sample of sites evaluates the new model on their own held-out data."""

    selection: UniformSelection
    name: str = "evaluate"

    def run(self, ctx: RoundContext) -> None:
        s, rnd = ctx.settings, ctx.number
        if s.federated_every <= 0 or rnd % s.federated_every:
            return
        chosen = self.selection.select(ctx.fleet.sites(), rnd, derive_seed(s.seed, "evaluate"))
        per_site: dict[str, tuple[int, dict[str, float]]] = {}

        def accept(site: str, res: EvaluateRes) -> None:
            per_site[site] = (res.num_examples, res.metrics)

        weights = ctx.model
        ctx.exchange(
            "evaluate",
            [(c, EvaluateIns(rnd, weights)) for c in chosen],
            accept,
            min_replies=s.min_evaluate_replies,
            deadline_s=s.evaluate_deadline_s,
        )
        ctx.metrics.update(weighted_metrics(list(per_site.values()), "federated_"))
        dist, ctx.worst_site = _distribution(per_site)
        ctx.metrics.update(dist)


def standard_steps(
    strategy: Strategy,
    settings: LoopSettings,
    *,
    central_eval: CentralEval | None = None,
    privacy: PrivacyController | None = None,
    root: tuple[Trainer, tuple[Any, Any]] | None = None,
    audit: Auditor | None = None,
    provenance: Provenance | None = None,
    fit: Step | None = None,
) -> list[Step]:
    """FedAvg's round, as the job asks: fit, server update, then the evaluations it has;
    with ``root`` (a trainer and the root data set: FLTrust) the root update first;
    ``fit`` replaces the plain fit step (secure aggregation's)."""
    steps: list[Step] = [
        fit or FitStep(strategy, privacy, audit, provenance),
        ServerUpdateStep(strategy, privacy),
    ]
    if root is not None:
        steps.insert(0, RootUpdateStep(root[0], root[1], strategy.train))
    if central_eval is not None and settings.central_every > 0:
        steps.append(CentralEvalStep(central_eval))
    if settings.federated_every > 0 and settings.federated_selection is not None:
        steps.append(FederatedEvalStep(settings.federated_selection))
    return steps


@dataclass
class Workflow:
    """The steps of every round, run in order over a fleet."""

    spec: ModelSpec
    steps: list[Step]
    settings: LoopSettings
    initial_optimizer_state: Callable[[np.ndarray], State] = lambda w: {}

    def initial_state(self, weights: np.ndarray) -> LoopState:
        self.spec.check_vector(weights)
        return LoopState(0, weights, self.initial_optimizer_state(weights))

    def run_round(
        self,
        state: LoopState,
        fleet: Fleet,
        publish: Callable[[Any], None] = lambda e: None,
        ctx_out: list[RoundContext] | None = None,
    ) -> tuple[LoopState, RoundRecord]:
        """One round; on failure the raised error leaves ``ctx_out[0]`` with its phases."""
        t0 = time.perf_counter()
        ctx = RoundContext(state.round + 1, state, fleet, self.spec, self.settings, publish)
        if ctx_out is not None:
            ctx_out.append(ctx)
        for step in self.steps:
            step.run(ctx)
        return ctx.new_state(), ctx.record(time.perf_counter() - t0)
