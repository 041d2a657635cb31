"""The robust rules as aggregators a job file can name, with their options.

``strategy.aggregator = "krum"`` picks one; ``[strategy.aggregator_options]`` sets its
options, checked by the aggregator's pydantic model (unknown keys refused with a
did-you-mean, like the rest of the job file). ``with_options`` returns a configured copy;
the registered object keeps its defaults.

``f`` (Byzantine updates tolerated per round) is either given, and then a round whose
replies are too few for it fails (the operator said f attackers may be present, and the
rule cannot promise that with fewer sites), or derived each round as
``floor(f_fraction * n)`` and capped at the largest f the rule allows for n rows.

Memory, per round (n replying sites, d values per update):
- median, trimmed mean, krum, multi-krum, bulyan, geometric median, centered clipping
  (several iterations, or after pre-aggregation), FLTrust (after pre-aggregation): every
  update of the round (n x d, stacked once when the round ends), plus an
  n x n distance matrix for the Krum family and NNM. Centered clipping also keeps one
  vector (its centre) across rounds, FLTrust one (the server's root update) per round.
- norm-bounded mean: one model, streamed (each update is clipped and added as it arrives);
  centered clipping with one iteration and no pre-aggregation step: two (the centre and
  the running sum of clipped differences); FLTrust without pre-aggregation steps: two
  (the root update and the running trust-weighted sum).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from consortia.core.errors import RoundFailedError
from consortia.strategy.aggregators import (
    AllUpdatesAggregator,
    Needs,
    RoundAggregate,
    State,
    StreamingMean,
)
from consortia.strategy.robust import mixing, rules

PreStep = Literal["nnm", "bucketing", "arc"]


class RobustOptions(BaseModel):
    """Options every rule that tolerates f attackers shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    f: int | None = Field(
        None, ge=0, description="Byzantine updates tolerated per round (default: f_fraction)"
    )
    f_fraction: float = Field(0.2, ge=0, lt=0.5, description="f = floor(f_fraction * n)")
    pre: list[PreStep] = Field(
        default_factory=list,
        description="pre-aggregation steps, in order: nnm, bucketing, arc (for non-IID data)",
    )
    bucket_size: int = Field(2, ge=1, description="updates averaged per bucket (bucketing)")
    seed: int = Field(0, description="seeds bucketing's shuffles (with a round counter)")


class MultiKrumOptions(RobustOptions):
    m: int | None = Field(None, ge=1, description="updates averaged (default n - f)")


class GeometricMedianOptions(RobustOptions):
    nu: float = Field(1e-6, gt=0, description="smoothing: distances below nu count as nu")
    iters: int = Field(10, ge=1, description="Weiszfeld iterations at most")
    tol: float = Field(1e-7, ge=0, description="stop when the objective improves less")


class CenteredClippingOptions(RobustOptions):
    tau: float = Field(1.0, gt=0, description="clipping radius around the centre")
    iters: int = Field(1, ge=1, description="clipping iterations per round")


class FLTrustOptions(RobustOptions):
    root: str = Field(
        "root_data",
        description="function of the task's app returning the server's root data set",
    )


class NormBoundOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_norm: float = Field(1.0, gt=0, description="each update is clipped to this L2 norm")
    weighted: bool = Field(True, description="weight by the (capped) example counts")


Rule = Callable[[np.ndarray, int, Any, State], tuple[np.ndarray, State]]
MaxF = Callable[[int], int]


def _half(n: int) -> int:
    return (n - 1) // 2  # largest f with 2f < n


def _counter(state: State) -> int:
    return int(state["rounds"][0]) if "rounds" in state else 0


def _premix(x: np.ndarray, f: int, opts: RobustOptions, state: State) -> np.ndarray:
    for step in opts.pre:
        n = x.shape[0]
        if step == "nnm":
            x = mixing.nearest_neighbour_mixing(x, min(f, n - 1))
        elif step == "arc":
            x = mixing.adaptive_robust_clipping(x, min(f, n))
        else:
            rng = np.random.default_rng([opts.seed, _counter(state)])
            x = mixing.bucketing(x, opts.bucket_size, rng.permutation(n))
    return x


@dataclass(frozen=True)
class RobustAggregator:
    """A rule over the round's stacked updates, with its options and the f it tolerates."""

    name: str
    rule: Rule
    max_f: MaxF
    options: RobustOptions = field(default_factory=RobustOptions)
    needs: Needs = "all"
    # A round that streams instead, where the options allow it (None: collect every update)
    stream: Callable[[Any, int, np.dtype, State], RoundAggregate | None] | None = None

    def with_options(self, options: Mapping[str, Any]) -> RobustAggregator:
        """A copy configured by a job file's ``[strategy.aggregator_options]`` (raises
        pydantic's ValidationError, which the job file's reader words)."""
        return dataclasses.replace(self, options=type(self.options).model_validate(options))

    @property
    def root_data(self) -> str | None:
        """The app function with the server's root data set, for rules that need one."""
        return getattr(self.options, "root", None)

    def f_for(self, n: int) -> int:
        """The f this round's rule runs with, for n rows."""
        o = self.options
        if o.f is None:
            return max(0, min(int(o.f_fraction * n), self.max_f(n)))
        if o.f > self.max_f(n):
            raise RoundFailedError(
                f"{self.name} with f={o.f} needs more updates than the {n} accepted this round "
                f"(it tolerates at most f={max(self.max_f(n), 0)} of {n})"
            )
        return o.f

    def combine(
        self, updates: np.ndarray, weights: np.ndarray, sites: Sequence[str], state: State
    ) -> tuple[np.ndarray, State]:
        f = self.f_for(updates.shape[0])
        x = _premix(updates, f, self.options, state)
        f_rule = min(f, max(self.max_f(x.shape[0]), 0))
        try:
            out, new_state = self.rule(x, f_rule, self.options, state)
        except rules.RuleError as exc:
            raise RoundFailedError(f"{self.name}: {exc}") from None
        if self.options.pre:
            new_state = {**new_state, "rounds": np.array([_counter(state) + 1], np.int64)}
        return out, new_state

    def begin(self, size: int, dtype: np.dtype, state: State) -> RoundAggregate:
        streamed = self.stream(self.options, size, dtype, state) if self.stream else None
        if streamed is not None:
            return streamed
        return AllUpdatesAggregator(self.name, self.combine).begin(size, dtype, state)


def _median(x: np.ndarray, f: int, o: Any, s: State) -> tuple[np.ndarray, State]:
    return rules.coordinate_median(x), {}


def _trimmed(x: np.ndarray, f: int, o: Any, s: State) -> tuple[np.ndarray, State]:
    return rules.trimmed_mean(x, f), {}


def _krum(x: np.ndarray, f: int, o: Any, s: State) -> tuple[np.ndarray, State]:
    return rules.krum(x, f), {}


def _multi_krum(x: np.ndarray, f: int, o: MultiKrumOptions, s: State) -> tuple[np.ndarray, State]:
    m = None if o.m is None else min(o.m, x.shape[0])
    return rules.multi_krum(x, f, m), {}


def _bulyan(x: np.ndarray, f: int, o: Any, s: State) -> tuple[np.ndarray, State]:
    return rules.bulyan(x, f), {}


def _geomed(x: np.ndarray, f: int, o: GeometricMedianOptions, s: State) -> tuple[np.ndarray, State]:
    return rules.geometric_median(x, nu=o.nu, iters=o.iters, tol=o.tol), {}


def _centered(
    x: np.ndarray, f: int, o: CenteredClippingOptions, s: State
) -> tuple[np.ndarray, State]:
    center = s.get("center")
    if center is None or center.shape != (x.shape[1],):
        center = np.zeros(x.shape[1])
    out = rules.centered_clipping(x, center, o.tau, o.iters)
    return out, {"center": out.astype(np.float64)}


class _CenteredClippingRound:
    """One clipping step streams: v + mean_i clip(x_i - v, tau) needs the centre and a sum."""

    def __init__(self, center: np.ndarray, tau: float, dtype: np.dtype) -> None:
        self._center = center
        self._dtype = dtype
        self._sum = np.zeros_like(center)
        self._count = 0
        self._tau = tau

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None:
        diff = update.astype(np.float64) - self._center
        self._sum += diff * rules.clip_scale(float(np.linalg.norm(diff)), self._tau)
        self._count += 1

    def result(self) -> tuple[np.ndarray, State]:
        if self._count == 0:
            raise RoundFailedError("centered clipping: no updates to aggregate")
        out = self._center + self._sum / self._count
        return out.astype(self._dtype), {"center": out}


def _centered_stream(
    o: CenteredClippingOptions, size: int, dtype: np.dtype, state: State
) -> RoundAggregate | None:
    """With one iteration and no pre-aggregation step, two vectors instead of n updates."""
    if o.iters != 1 or o.pre:
        return None
    center = state.get("center")
    if center is None or center.shape != (size,):
        center = np.zeros(size)
    return _CenteredClippingRound(np.asarray(center, np.float64), o.tau, np.dtype(dtype))


ROOT_UPDATE = "root_update"


def _fltrust(x: np.ndarray, f: int, o: FLTrustOptions, s: State) -> tuple[np.ndarray, State]:
    root = s.get(ROOT_UPDATE)
    if root is None:
        raise RoundFailedError(
            "fltrust: no root update this round (the server trains one on its root data set "
            "before aggregating; is the fltrust round step in the workflow?)"
        )
    return rules.fltrust(x, root), {}


class _FLTrustRound:
    """FLTrust streams: each update's trust and rescaling need only itself and the root."""

    def __init__(self, root: np.ndarray, dtype: np.dtype) -> None:
        self._root = root
        self._root_norm = float(np.linalg.norm(root))
        self._sum = np.zeros_like(root)
        self._trust = 0.0
        self._count = 0
        self._dtype = dtype

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None:
        u = update.astype(np.float64)
        norm = float(np.linalg.norm(u))
        self._count += 1
        if norm == 0.0 or self._root_norm == 0.0:
            return
        trust = max(float(u @ self._root) / (norm * self._root_norm), 0.0)
        if trust > 0.0:
            self._sum += (trust * self._root_norm / norm) * u
            self._trust += trust

    def result(self) -> tuple[np.ndarray, State]:
        if self._count == 0:
            raise RoundFailedError("fltrust: no updates to aggregate")
        out = self._sum / self._trust if self._trust > 0 else np.zeros_like(self._sum)
        return out.astype(self._dtype), {}


def _fltrust_stream(
    o: FLTrustOptions, size: int, dtype: np.dtype, state: State
) -> RoundAggregate | None:
    """Without pre-aggregation steps: two vectors (the root update and a sum)."""
    root = state.get(ROOT_UPDATE)
    if o.pre or root is None or root.shape != (size,):
        return None  # the collecting round then says what is missing
    return _FLTrustRound(np.asarray(root, np.float64), np.dtype(dtype))


def _bulyan_max_f(n: int) -> int:
    return (n - 3) // 4


def _any_f(n: int) -> int:
    return n  # the rule ignores f: any value is fine


ROBUST_AGGREGATORS: tuple[RobustAggregator, ...] = (
    RobustAggregator("median", _median, _half),
    RobustAggregator("trimmed_mean", _trimmed, _half),
    RobustAggregator("krum", _krum, _half),
    RobustAggregator("multi_krum", _multi_krum, _half, MultiKrumOptions()),
    RobustAggregator("bulyan", _bulyan, _bulyan_max_f),
    RobustAggregator("geometric_median", _geomed, _any_f, GeometricMedianOptions()),
    RobustAggregator(
        "centered_clipping",
        _centered,
        _any_f,
        CenteredClippingOptions(),
        stream=_centered_stream,
    ),
    RobustAggregator("fltrust", _fltrust, _any_f, FLTrustOptions(), stream=_fltrust_stream),
)


class _NormBoundRound:
    def __init__(self, acc: StreamingMean, opts: NormBoundOptions) -> None:
        self._acc = acc
        self._opts = opts

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None:
        norm = float(np.linalg.norm(update.astype(np.float64)))
        scale = rules.clip_scale(norm, self._opts.max_norm)
        self._acc.add(update if scale == 1.0 else (update * scale).astype(update.dtype), weight)

    def result(self) -> tuple[np.ndarray, State]:
        return self._acc.result(), {}


@dataclass(frozen=True)
class NormBoundedMean:
    """Each update clipped to ``max_norm`` as it arrives, then the mean: streams (one model).

    It sees every update (needs "all"), but its output is a sum of contributions of norm
    at most ``max_norm`` each, so under central DP (which clips and noises that sum) its
    sensitivity stays bounded: ``bounded_sensitivity`` says so to the job-file check.
    """

    options: NormBoundOptions = field(default_factory=NormBoundOptions)
    name: str = "norm_bounded_mean"
    needs: Needs = "all"
    bounded_sensitivity: bool = True

    def with_options(self, options: Mapping[str, Any]) -> NormBoundedMean:
        return dataclasses.replace(self, options=NormBoundOptions.model_validate(options))

    def begin(self, size: int, dtype: np.dtype, state: State) -> RoundAggregate:
        acc = StreamingMean(size, dtype, weighted=self.options.weighted)
        return _NormBoundRound(acc, self.options)
