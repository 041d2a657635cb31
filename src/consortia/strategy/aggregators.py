"""Aggregators: a round's updates -> one update.

The contract (``Aggregator``): ``begin(size, dtype, state)`` opens a round, the round loop
calls ``add(site, update, weight, metrics)`` once per accepted reply, in request order, and
``result()`` returns the aggregate with the state to keep for the next round (saved in the
loop state and in checkpoints). Each aggregator declares what it needs: ``"sum"`` (it is a
function of the weighted sum only, so it works under secure aggregation and distributed
DP, where the server never sees one update) or ``"all"`` (robust statistics need every
update: memory of one model per replying site). A job that pairs an ``"all"`` aggregator
with a sum-only privacy mode is refused when the job file is read.

The mean streams: server memory holds one model, not one per site.

The weighted sum uses BLAS ``axpy`` (``y += a*x`` in one fused pass) from SciPy, because
NumPy has no fused multiply-add ufunc: ``acc += w * u`` would materialise ``w * u`` and
move every byte twice.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from scipy.linalg import blas

from consortia.core.errors import ConsortiaError, RoundFailedError
from consortia.core.messages import FitRes
from consortia.core.registry import AGGREGATORS

State = dict[str, np.ndarray]
Needs = Literal["sum", "all"]


@functools.cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Summing is memory-bound: one core already saturates the memory bus, and OpenBLAS
    splitting every block-sized axpy over two cores only adds a hand-off per call (measured
    2-5x slower on a busy two-core machine)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


# 128 Ki values (512 KiB of float32): small enough that the accumulator block stays in
# the L2 cache while every update's block streams past it, so each input is read once.
_BLOCK = 1 << 17


class AggregationError(ConsortiaError):
    """Updates cannot be combined as asked (no updates, zero total weight, mixed sizes)."""


def _axpy(dtype: np.dtype):  # type: ignore[no-untyped-def]
    if dtype == np.float32:
        return blas.saxpy
    if dtype == np.float64:
        return blas.daxpy
    raise AggregationError(f"updates must be float32 or float64, got {dtype}")


def _normalised(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise AggregationError(f"{n} updates but {w.size} weights")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise AggregationError("weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise AggregationError("total weight is zero: no update carries any examples")
    return w / total


def weighted_mean(updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i w_i u_i / sum_i w_i over updates already in memory (or memory-mapped).

    Blocked: for each block of the output, every update's matching block is added into it
    while it sits in cache, so the inputs are read once and the output written once.
    """
    if not updates:
        raise AggregationError("no updates to aggregate")
    size, dtype = updates[0].shape, updates[0].dtype
    for i, u in enumerate(updates):
        if u.ndim != 1 or u.shape != size or u.dtype != dtype:
            raise AggregationError(
                f"update {i} has shape {u.shape} and dtype {u.dtype}; expected {size} {dtype}"
            )
    w = _normalised(weights, len(updates))
    axpy = _axpy(dtype)
    out = np.zeros(size, dtype=dtype)
    n = size[0]
    with _one_blas_thread():
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            acc = out[start:stop]
            for u, wi in zip(updates, w, strict=True):
                if wi != 0.0:
                    axpy(u[start:stop], acc, a=wi)
    return out


def mean(updates: Sequence[np.ndarray]) -> np.ndarray:
    """Unweighted mean: every site counts the same whatever its number of examples."""
    return weighted_mean(updates, [1.0] * len(updates))


class RoundAggregate(Protocol):
    """One round's aggregation in progress."""

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None: ...

    def result(self) -> tuple[np.ndarray, State]:
        """The aggregate update and the aggregator's state for the next round."""
        ...


class Aggregator(Protocol):
    """Opens one ``RoundAggregate`` per round; ``needs`` says "sum" or "all" (see above)."""

    @property
    def name(self) -> str: ...

    @property
    def needs(self) -> Needs: ...

    def begin(self, size: int, dtype: np.dtype, state: State) -> RoundAggregate: ...


class StreamingMean:
    """Running weighted sum: one model-sized buffer however many sites reply."""

    def __init__(self, size: int, dtype: np.dtype, weighted: bool = True) -> None:
        self._sum = np.zeros(size, dtype=dtype)
        self._axpy = _axpy(np.dtype(dtype))
        self._total = 0.0
        self._count = 0
        self._weighted = weighted

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: np.ndarray, weight: float) -> None:
        if update.shape != self._sum.shape or update.dtype != self._sum.dtype:
            raise AggregationError(
                f"update of shape {update.shape} {update.dtype} does not match "
                f"{self._sum.shape} {self._sum.dtype}"
            )
        w = float(weight) if self._weighted else 1.0
        if not np.isfinite(w) or w < 0:
            raise AggregationError(f"weight must be finite and non-negative, got {weight}")
        self._count += 1
        if w == 0.0:
            return
        with _one_blas_thread():
            self._axpy(update, self._sum, a=w)
        self._total += w

    def result(self) -> np.ndarray:
        """The mean, divided in place: the accumulator is used up (one round, one result)."""
        if self._total <= 0:
            raise AggregationError("total weight is zero: no update carries any examples")
        self._sum /= self._total
        self._total = 1.0
        return self._sum


class _MeanRound:
    def __init__(self, acc: StreamingMean) -> None:
        self._acc = acc

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None:
        self._acc.add(update, weight)

    def result(self) -> tuple[np.ndarray, State]:
        return self._acc.result(), {}


@dataclass(frozen=True)
class MeanAggregator:
    """Weighted (by examples) or unweighted mean, streamed: a function of the sum."""

    weighted: bool = True
    needs: Needs = "sum"

    @property
    def name(self) -> str:
        return "weighted_mean" if self.weighted else "mean"

    def begin(self, size: int, dtype: np.dtype, state: State) -> RoundAggregate:
        return _MeanRound(StreamingMean(size, dtype, weighted=self.weighted))


# A pure function over the round's stacked updates (rows in request order), their weights,
# the senders and the state from the previous round; returns the aggregate, or the
# aggregate and the state to keep.
CombineFn = Callable[
    [np.ndarray, np.ndarray, Sequence[str], State], "np.ndarray | tuple[np.ndarray, State]"
]


@dataclass
class _CollectRound:
    fn: CombineFn
    size: int
    dtype: np.dtype
    state: State
    sites: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None:
        if update.shape != (self.size,):
            raise AggregationError(f"update of shape {update.shape} is not ({self.size},)")
        self.sites.append(site)
        self.weights.append(float(weight))
        self.rows.append(update)

    def result(self) -> tuple[np.ndarray, State]:
        if not self.rows:
            raise AggregationError("no updates to aggregate")
        stacked = np.stack(self.rows)
        self.rows.clear()  # the stacked copy is now the only one this round needs
        out = self.fn(stacked, np.asarray(self.weights, np.float64), self.sites, self.state)
        vector, state = out if isinstance(out, tuple) else (out, self.state)
        vector = np.asarray(vector)
        if vector.shape != (self.size,):
            raise AggregationError(f"aggregate of shape {vector.shape} is not ({self.size},)")
        return vector.astype(self.dtype, copy=False), dict(state)


@dataclass(frozen=True)
class AllUpdatesAggregator:
    """An aggregator that needs every update, from a pure function (see ``CombineFn``).

    Memory: one model per replying site, held until the round's result.
    """

    name: str
    fn: CombineFn
    needs: Needs = "all"

    def begin(self, size: int, dtype: np.dtype, state: State) -> RoundAggregate:
        return _CollectRound(self.fn, size, np.dtype(dtype), dict(state))


def coordinate_median(
    updates: np.ndarray, weights: np.ndarray, sites: Sequence[str], state: State
) -> np.ndarray:
    """Coordinate-wise median (unweighted): a few outlying updates cannot drag it far."""
    return np.median(updates, axis=0)


class FitSink:
    """A round's fit replies streamed into the strategy's aggregator, weighted by examples.

    The privacy wrappers (privacy/mechanisms/) have the same shape and wrap the aggregator
    instead of replacing it: clip before it and noise after it (central), or hand it the decoded sum
    of encoded updates (distributed), so the aggregator the job names is always the one
    that runs.
    """

    def __init__(self, inner: RoundAggregate) -> None:
        self._inner = inner
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        self._inner.add(res.site, res.delta, res.num_examples, res.metrics)
        self.contributors.append((res.site, res.num_examples))

    def result(self) -> tuple[np.ndarray, State]:
        if not any(n > 0 for _, n in self.contributors):
            raise RoundFailedError("no replying site had any training examples")
        return self._inner.result()


def register_aggregator(aggregator: Any, *, replace: bool = False) -> Any:
    """Make ``aggregator`` nameable in a job file's ``strategy.aggregator``."""
    if getattr(aggregator, "needs", None) not in ("sum", "all"):
        raise AggregationError(
            f"aggregator {getattr(aggregator, 'name', aggregator)!r} must declare "
            "needs = 'sum' or 'all'"
        )
    return AGGREGATORS.register(aggregator.name, aggregator, replace=replace)
