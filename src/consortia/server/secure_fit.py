"""The fit step under secure aggregation: four phases where plain FedAvg has one.

keys -> shares -> masked input (the fit request, training at the site) -> unmask; then the
unmasked sum of the survivors goes to the job's sum-only aggregator, through the privacy
mechanism under distributed DP. The server never holds one site's update: only masked
inputs, summed as they arrive, and the shares that remove the masks from the sum.

Each phase may lose sites; the protocol state (``consortia.secagg.server.ServerRound``)
carries on with whoever answered, and the round fails cleanly, with nothing unmasked, when
too few remain for some secret's threshold.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.core.config import SecureAggregationConfig
from consortia.core.errors import RoundFailedError
from consortia.core.messages import FitRes
from consortia.secagg.context import SecAggError
from consortia.secagg.encoding import FixedPoint
from consortia.secagg.neighbours import choose, failure_bound
from consortia.secagg.server import MIN_PARTICIPANTS, RoundFigures, RoundParams, ServerRound
from consortia.server.workflow import RoundContext, fit_request
from consortia.strategy.presets import Strategy

if TYPE_CHECKING:
    from consortia.server.privacy import PrivacyController
    from consortia.server.provenance import Provenance

log = logging.getLogger(__name__)

DEFAULT_BITS = 32
METRIC_PREFIX = "secagg_"  # the round's figures in its metrics row, for a resumed run


def round_params(
    cfg: SecureAggregationConfig, n_sites: int, privacy_bits: int | None
) -> RoundParams:
    """k, t and the ring for a round of ``n_sites``: from the job, else derived.

    Float updates: the scale is the largest whose n-site sum of (weighted, clipped) values
    cannot wrap in ``bits`` (``FixedPoint.max_sites``); distributed DP brings its own ring.
    """
    k, t, log2 = graph_for(cfg, n_sites)
    if privacy_bits is not None:
        return RoundParams(k, t, privacy_bits, log2_failure=log2)
    bits = cfg.bits or DEFAULT_BITS
    level = ((1 << bits) - 1) // n_sites - 1
    scale = level / (2 * cfg.clip_range)
    ring = FixedPoint(cfg.clip_range, scale, bits)
    if ring.max_sites < n_sites:  # float rounding of level/(2 clip): one step lower
        ring = FixedPoint(cfg.clip_range, (level - 1) / (2 * cfg.clip_range), bits)
    return RoundParams(k, t, bits, ring.clip, ring.scale, cfg.weight_cap, log2)


def graph_for(cfg: SecureAggregationConfig, n_sites: int) -> tuple[int, int, float]:
    """k, t and log2 of the failure bound for a round of ``n_sites`` (see ``_graph``)."""
    return _graph(
        n_sites,
        cfg.neighbours,
        cfg.threshold,
        cfg.dropout_rate,
        cfg.corrupt_fraction,
        cfg.failure_bits,
    )


@functools.lru_cache(maxsize=64)
def _graph(
    n_sites: int,
    neighbours: int | None,
    threshold: int | None,
    dropout_rate: float,
    corrupt: float,
    failure_bits: float,
) -> tuple[int, int, float]:
    """The job's k and t (capped to the round), else the smallest k meeting
    2^-failure_bits; when no k can (a few sites with dropouts assumed), the complete graph
    with the lowest safe threshold, which tolerates the most dropouts: the report then
    states the bound it does achieve. Cached per round size: the tail sums cost
    milliseconds, every round."""
    if neighbours is not None:
        k = min(neighbours, n_sites - 1)
        k -= k % 2 if k < n_sites - 1 else 0
        t = threshold if threshold is not None else k // 2 + 1
        t = min(max(t, (k + 1) // 2 + 1), k)
    else:
        try:
            choice = choose(n_sites, dropout_rate, corrupt, failure_bits)
            k, t = choice.k, choice.threshold
        except SecAggError:
            k = n_sites - 1
            t = (k + 1) // 2 + 1
    bound = failure_bound(n_sites, k, t, dropout_rate, corrupt)
    return k, t, (math.log2(bound) if bound > 0 else -math.inf)


def decode_weighted(total: np.ndarray, params: RoundParams, survivors: int) -> np.ndarray:
    """Sum of w * update over the survivors divided by the sum of their weights."""
    ring = FixedPoint(params.clip, params.scale, params.bits)
    values = ring.decode_sum(total, survivors)
    weight = values[-1] / params.clip
    if weight <= 0:
        raise RoundFailedError("no site that sent a masked input had any training examples")
    return values[:-1] / weight


@dataclass
class SecureAggregationLog:
    """Per round, what the server saw (summary.json and privacy.json publish it)."""

    rounds: list[RoundFigures] = field(default_factory=list)

    def restore(self, history: list[dict[str, Any]]) -> None:
        """The completed rounds of a resumed run, from the store's metrics rows."""
        for row in history:
            if METRIC_PREFIX + "masked_inputs" not in row:
                continue
            self.rounds.append(
                RoundFigures(
                    int(row["round"]),
                    int(row.get("sites", 0)),
                    int(row[METRIC_PREFIX + "neighbours"]),
                    int(row[METRIC_PREFIX + "threshold"]),
                    row.get(METRIC_PREFIX + "failure_bound_log2"),
                    int(row[METRIC_PREFIX + "masked_inputs"]),
                    int(row[METRIC_PREFIX + "dropouts_recovered"]),
                    int(row[METRIC_PREFIX + "individual_unmasked"]),
                    True,
                )
            )

    def report(self, cfg: SecureAggregationConfig) -> dict[str, Any]:
        return {
            "enabled": True,
            "protocol": "SecAgg+ (Bell et al. 2020) over SecAgg (Bonawitz et al. 2017)",
            "what_the_server_saw": "masked inputs only, and the sum of each round's "
            "survivors once unmasked; never one site's update (individual_updates_unmasked)",
            "settings": cfg.model_dump(),
            "per_round": [
                {
                    "round": f.round,
                    "sites_asked": f.participants,
                    "neighbours": f.neighbours,
                    "threshold": f.threshold,
                    "failure_bound_log2": f.log2_failure,
                    "masked_inputs": f.masked_inputs,
                    "dropouts_recovered": f.dropouts_recovered,
                    "individual_updates_unmasked": f.individual_unmasked,
                    "completed": f.completed,
                }
                for f in self.rounds
            ],
        }


@dataclass
class SecureFitStep:
    """Select sites and run one SecAgg+ round with them (see the module docstring)."""

    strategy: Strategy
    cfg: SecureAggregationConfig
    privacy: PrivacyController | None = None
    provenance: Provenance | None = None
    log: SecureAggregationLog = field(default_factory=SecureAggregationLog)
    name: str = "fit"

    def run(self, ctx: RoundContext) -> None:
        s, dp, rnd = ctx.settings, self.privacy, ctx.number
        if dp is not None:
            ctx.participation_private = True
            dp.before_round(rnd)
        prov = self.provenance
        if prov is not None:
            prov.begin_round()
        chosen = self.strategy.selection.select(ctx.fleet.sites(), rnd, s.seed)
        ctx.selected = len(chosen)
        minimum = max(MIN_PARTICIPANTS, s.min_fit_replies if dp is None else dp.min_replies)
        if len(chosen) < minimum:
            raise RoundFailedError(
                f"round {rnd}: {len(chosen)} sites selected, secure aggregation needs {minimum}"
            )
        params = round_params(self.cfg, len(chosen), dp.modulus_bits if dp else None)
        proto = ServerRound(s.job_id or "job", rnd, chosen, params)
        try:
            total = self._phases(ctx, proto, minimum)
        except SecAggError as exc:
            raise RoundFailedError(f"round {rnd} secure aggregation: {exc}") from None
        finally:
            self.log.rounds.append(proto.figures)
        ctx.fit_replies = len(proto.survivors)
        self._aggregate(ctx, proto, total)
        f = proto.figures
        ctx.metrics.update(
            {
                METRIC_PREFIX + "masked_inputs": float(f.masked_inputs),
                METRIC_PREFIX + "dropouts_recovered": float(f.dropouts_recovered),
                METRIC_PREFIX + "individual_unmasked": float(f.individual_unmasked),
                METRIC_PREFIX + "neighbours": float(f.neighbours),
                METRIC_PREFIX + "threshold": float(f.threshold),
            }
        )
        if f.log2_failure is not None:
            ctx.metrics[METRIC_PREFIX + "failure_bound_log2"] = f.log2_failure
        log.info(
            "round %d: secure sum of %d masked inputs, %d dropouts recovered",
            rnd,
            proto.figures.masked_inputs,
            proto.figures.dropouts_recovered,
        )

    def _phases(self, ctx: RoundContext, proto: ServerRound, minimum: int) -> np.ndarray:
        s, dp, rnd, prov = ctx.settings, self.privacy, ctx.number, self.provenance
        keep = 1.0 - self.cfg.dropout_rate

        def phase(name: str, requests: list[Any], accept: Any, **kw: Any) -> None:
            # The graph is sized for dropout_rate: wait for the sites it expects to answer
            # before the grace period starts, so sites merely queued (a busy pool, a slow
            # link) are not dropped in numbers the protocol cannot recover from.
            wait = math.ceil(keep * len(requests))
            ctx.exchange(name, requests, accept, wait_for=wait, **kw)

        phase("secagg_keys", proto.keys_requests(), proto.accept_keys, min_replies=minimum)
        phase("secagg_shares", proto.shares_requests(), proto.accept_shares, min_replies=minimum)
        train = dp.train_settings(self.strategy.train) if dp else self.strategy.train
        instructions = dp.client_privacy() if dp else None
        inputs = proto.secure_inputs()
        n = len(proto.ids)
        requests = [
            (site, fit_request(ctx, site, train, instructions, n, secure))
            for site, secure in inputs.items()
        ]

        def accept(site: str, res: FitRes) -> None:
            if prov is not None:
                prov.check_update(site, res, rnd)  # a bad signature: refused, never summed
            if dp is not None:
                dp.note_seeded(res)
            proto.accept_masked(site, res.delta)

        phase("fit", requests, accept, min_replies=minimum, deadline_s=s.fit_deadline_s)
        ctx.values["train_settings"] = train
        phase("secagg_unmask", proto.unmask_requests(), proto.accept_unmask)
        return proto.result()

    def _aggregate(self, ctx: RoundContext, proto: ServerRound, total: np.ndarray) -> None:
        dp, agg = self.privacy, self.strategy.aggregator
        state = ctx.state.aggregator_state if ctx.aggregator_state is None else ctx.aggregator_state
        if dp is not None:
            sink = dp.begin_round(agg, ctx.spec.vector_dtype, state)
            sink.add_sum(total, proto.survivors)  # type: ignore[attr-defined]
            try:
                aggregate, ctx.aggregator_state = sink.result()
            except RoundFailedError as exc:
                raise RoundFailedError(f"round {ctx.number}: {exc}") from None
            ctx.values["fit_sink"] = sink
        else:
            mean = decode_weighted(total, proto.params, len(proto.survivors))
            inner = agg.begin(ctx.spec.size, ctx.spec.vector_dtype, state)
            inner.add("(secure sum)", mean.astype(ctx.spec.vector_dtype), 1.0, {})
            aggregate, ctx.aggregator_state = inner.result()
        if self.provenance is not None:
            self.provenance.aggregate(aggregate)
        ctx.values["aggregate"] = aggregate
