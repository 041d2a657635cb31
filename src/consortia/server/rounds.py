"""The round loop: the one place that drives a federation, phase by phase.

Per round: select sites -> fit phase (replies validated and streamed into the
aggregator) -> server optimiser step -> central evaluation -> federated evaluation phase
-> listeners (metrics file, TensorBoard, checkpoints, progress). Strategies never own
this loop; they only supply its parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from consortia.core.errors import RoundFailedError
from consortia.core.messages import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    validate_evaluate_res,
    validate_fit_res,
)
from consortia.core.rng import derive_seed
from consortia.core.spec import ModelSpec
from consortia.fleet.base import Failure, Fleet
from consortia.server.phases import Phase, run_phase
from consortia.strategy.aggregators import PlainRound
from consortia.strategy.presets import Strategy
from consortia.strategy.selection import UniformSelection
from consortia.strategy.server_opt import State

if TYPE_CHECKING:
    from consortia.server.privacy import PrivacyController

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


@dataclass
class RoundRecord:
    round: int
    sites: int
    replies: int
    failures: list[Failure]
    seconds: float
    metrics: dict[str, float]
    worst_site: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "sites": self.sites,
            "replies": self.replies,
            "failures": len(self.failures),
            "seconds": round(self.seconds, 6),
            **self.metrics,
        }
        if self.failures:
            out["failed_sites"] = {f.site: f.reason for f in self.failures}
        if self.worst_site is not None:
            out["worst_site"] = self.worst_site
        return out


@dataclass
class LoopState:
    """Everything needed to continue a run: a checkpoint is this, written to disk."""

    round: int
    weights: np.ndarray
    optimizer_state: State = field(default_factory=dict)


class RoundListener(Protocol):
    def on_round(self, record: RoundRecord, state: LoopState) -> None: ...


def _weighted(values: Sequence[tuple[int, dict[str, float]]], prefix: str) -> dict[str, float]:
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


class RoundLoop:
    def __init__(
        self,
        spec: ModelSpec,
        strategy: Strategy,
        fleet: Fleet,
        settings: LoopSettings,
        central_eval: CentralEval | None = None,
        listeners: Sequence[RoundListener] = (),
        privacy: PrivacyController | None = None,
    ) -> None:
        self.spec = spec
        self.strategy = strategy
        self.fleet = fleet
        self.settings = settings
        self.central_eval = central_eval
        self.listeners = list(listeners)
        self.privacy = privacy

    def initial_state(self, weights: np.ndarray) -> LoopState:
        self.spec.check_vector(weights)
        return LoopState(0, weights, self.strategy.server_optimizer.init(weights))

    def run(self, state: LoopState) -> LoopState:
        """Run rounds state.round+1 .. settings.rounds; on failure the last good state stays
        with the listeners and RoundFailedError carries the reason."""
        while state.round < self.settings.rounds:
            state = self.run_round(state)
        return state

    def run_round(self, state: LoopState) -> LoopState:
        rnd = state.round + 1
        t0 = time.perf_counter()
        s, dp = self.settings, self.privacy
        if dp is not None:
            dp.before_round(rnd)  # raises BudgetExhausted before anything is sent
        chosen = self.strategy.selection.select(self.fleet.sites(), rnd, s.seed)
        train = dp.train_settings(self.strategy.train) if dp else self.strategy.train
        client_privacy = dp.client_privacy() if dp else None
        requests = [
            (
                site,
                FitIns(
                    rnd, state.weights, train, derive_seed(s.seed, "fit", rnd, site), client_privacy
                ),
            )
            for site in chosen
        ]
        acc = self.strategy.aggregator.begin(self.spec.size, self.spec.vector_dtype)
        agg = dp.begin_round(acc, self.spec.size, self.spec.vector_dtype) if dp else PlainRound(acc)
        bits = dp.modulus_bits if dp else 0
        fit_metrics: list[tuple[int, dict[str, float]]] = []

        def accept_fit(site: str, message: Any) -> None:
            res: FitRes = validate_fit_res(message, self.spec, site, rnd, modulus_bits=bits)
            agg.add(res)
            fit_metrics.append((res.num_examples, res.metrics))

        min_replies = s.min_fit_replies if dp is None else dp.min_replies
        fit = run_phase(
            self.fleet, Phase("fit", rnd, requests, s.fit_deadline_s, min_replies), accept_fit
        )
        if isinstance(agg, PlainRound) and sum(n for n, _ in fit_metrics) == 0:
            raise RoundFailedError(f"round {rnd}: no replying site had any training examples")
        delta = agg.result()
        weights, opt_state = self.strategy.server_optimizer.step(
            state.optimizer_state, state.weights, delta
        )
        if not np.isfinite(weights).all():
            raise RoundFailedError(f"round {rnd}: the new global model is not finite (diverged)")
        metrics = _weighted(fit_metrics, "train_")
        if dp is not None:
            metrics.update(dp.end_round(rnd, agg, train))
        if (
            self.central_eval is not None
            and s.central_every > 0
            and (rnd % s.central_every == 0 or rnd == s.rounds)
        ):
            metrics.update(self.central_eval(weights))
        failures = list(fit.failures)
        worst = None
        if (
            s.federated_every > 0
            and s.federated_selection is not None
            and rnd % s.federated_every == 0
        ):
            fed, fed_failures, worst = self._federated_evaluation(rnd, weights)
            metrics.update(fed)
            failures.extend(fed_failures)
        new_state = LoopState(rnd, weights, opt_state)
        record = RoundRecord(
            rnd, len(chosen), len(fit.accepted), failures, time.perf_counter() - t0, metrics, worst
        )
        for listener in self.listeners:
            listener.on_round(record, new_state)
        return new_state

    def _federated_evaluation(
        self, rnd: int, weights: np.ndarray
    ) -> tuple[dict[str, float], list[Failure], str | None]:
        s = self.settings
        assert s.federated_selection is not None
        chosen = s.federated_selection.select(
            self.fleet.sites(), rnd, derive_seed(s.seed, "evaluate")
        )
        per_site: dict[str, tuple[int, dict[str, float]]] = {}

        def accept(site: str, message: Any) -> None:
            res: EvaluateRes = validate_evaluate_res(message, site, rnd)
            per_site[site] = (res.num_examples, res.metrics)

        phase = Phase(
            "evaluate",
            rnd,
            [(c, EvaluateIns(rnd, weights)) for c in chosen],
            s.evaluate_deadline_s,
            s.min_evaluate_replies,
        )
        outcome = run_phase(self.fleet, phase, accept)
        metrics = _weighted(list(per_site.values()), "federated_")
        dist, worst = _distribution(per_site)
        metrics.update(dist)
        return metrics, outcome.failures, worst
