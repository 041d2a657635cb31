"""Aggregators: many flat update vectors -> one.

Pure functions over vectors, plus a streaming accumulator the round loop feeds one reply at
a time so that server memory holds one model, not one per site.

The weighted sum uses BLAS ``axpy`` (``y += a*x`` in one fused pass) from SciPy, because
NumPy has no fused multiply-add ufunc: ``acc += w * u`` would materialise ``w * u`` and
move every byte twice.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.linalg import blas

from consortia.core.errors import ConsortiaError
from consortia.core.messages import FitRes


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


class Accumulator(Protocol):
    def add(self, update: np.ndarray, weight: float) -> None: ...

    def result(self) -> np.ndarray: ...

    @property
    def count(self) -> int: ...


class Aggregator(Protocol):
    """Makes a fresh accumulator for one round."""

    @property
    def name(self) -> str: ...

    def begin(self, size: int, dtype: np.dtype) -> Accumulator: ...


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


@dataclass(frozen=True)
class MeanAggregator:
    """Weighted (by examples) or unweighted mean, streamed."""

    weighted: bool = True

    @property
    def name(self) -> str:
        return "weighted_mean" if self.weighted else "mean"

    def begin(self, size: int, dtype: np.dtype) -> Accumulator:
        return StreamingMean(size, dtype, weighted=self.weighted)


class PlainRound:
    """A round's replies streamed into an accumulator by their example counts; the shape
    the privacy wrappers (server/privacy.py) replace when DP is on."""

    def __init__(self, acc: Accumulator) -> None:
        self._acc = acc
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        self._acc.add(res.delta, res.num_examples)
        self.contributors.append((res.site, res.num_examples))

    def result(self) -> np.ndarray:
        return self._acc.result()


AGGREGATORS: dict[str, Aggregator] = {
    "weighted_mean": MeanAggregator(weighted=True),
    "mean": MeanAggregator(weighted=False),
}
