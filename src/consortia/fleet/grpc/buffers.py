"""Receive buffers that outlive their message, so the next one of the same size reuses them.

Why: every model or update that arrives is written into a fresh model-sized array. Above
glibc's mmap threshold (32 MiB at most) each such array is new memory from the kernel,
which zeroes every page on first touch. In a gRPC round with ten sites and a 40 MB model,
that zeroing was about 7% of the whole federation's CPU (profiled with perf), on both
sides of the wire. A round of the same job receives arrays of the same sizes again, so
the memory of the previous round's arrays can take the new ones.

A buffer is lent out as a view, and is free again once nothing refers to it: the view,
and every view made from it, holds a reference to the pooled buffer, so its reference
count says whether anyone still uses it (NumPy decides when a temporary can be reused
the same way). Arrays that other libraries wrap (``torch.from_numpy``, a memoryview)
hold references too. The pool keeps at most ``max_bytes`` of buffers; anything beyond
is allocated as before and freed when its last user lets go.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

DEFAULT_POOL_BYTES = 1 << 30
# Smaller arrays come from malloc's own free lists, already-touched memory: no gain.
MIN_POOLED_BYTES = 1 << 20


def _free_refs() -> int:
    """The reference count a pooled buffer has in ``take``'s scan when nothing else holds
    it: measured here with the same code shape rather than assumed, since the count seen
    from a frame differs between Python versions."""
    bucket = [np.empty(1, np.uint8)]
    for buf in bucket:
        return sys.getrefcount(buf)
    raise AssertionError("unreachable")


_FREE_REFS = _free_refs()
# A free-threaded CPython counts references per thread (biased counting), so a count read
# here may not include another thread's references: there, nothing is pooled.
_COUNTS_ARE_WHOLE = bool(getattr(sys, "_is_gil_enabled", lambda: True)())


class BufferPool:
    """Byte buffers grouped by size; ``take`` lends a free one (or a new one) as a view."""

    def __init__(self, max_bytes: int = DEFAULT_POOL_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buckets: dict[int, list[np.ndarray]] = {}
        self._retained = 0
        self._lock = threading.Lock()

    @property
    def retained_bytes(self) -> int:
        return self._retained

    def take(self, length: int, dtype: np.dtype) -> np.ndarray:
        """An uninitialised 1-D array of ``length`` values of ``dtype``, as ``np.empty``."""
        dt = np.dtype(dtype)
        nbytes = length * dt.itemsize
        if nbytes < MIN_POOLED_BYTES or not _COUNTS_ARE_WHOLE:
            return np.empty(length, dt)
        with self._lock:
            bucket = self._buckets.setdefault(nbytes, [])
            for buf in bucket:
                if sys.getrefcount(buf) <= _FREE_REFS:
                    return buf.view(dt)
            buf = np.empty(nbytes, np.uint8)
            if self._retained + nbytes <= self.max_bytes:
                bucket.append(buf)
                self._retained += nbytes
        return buf.view(dt)

    def clear(self) -> None:
        """Forget every buffer: those still lent out live on until their users let go."""
        with self._lock:
            self._buckets.clear()
            self._retained = 0
