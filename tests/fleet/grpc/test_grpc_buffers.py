"""Receive buffers are reused only once nothing refers to them: memory held by anyone (a
view, a memoryview, a tensor, a site that keeps last round's model) is never written."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from consortia.fleet.grpc.buffers import MIN_POOLED_BYTES, BufferPool

N = MIN_POOLED_BYTES // 4  # float32 values in the smallest pooled buffer


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_buffer_is_lent_again_once_its_array_is_gone() -> None:
    pool = BufferPool()
    a = pool.take(N, np.dtype(np.float32))
    first = _address(a)
    del a
    b = pool.take(N, np.dtype(np.float32))
    assert _address(b) == first
    # The same bytes serve another dtype of the same size.
    del b
    c = pool.take(N // 2, np.dtype(np.float64))
    assert _address(c) == first and c.dtype == np.float64 and c.shape == (N // 2,)
    assert pool.retained_bytes == MIN_POOLED_BYTES


HOLDERS: dict[str, Callable[[np.ndarray], Any]] = {
    "the array": lambda a: a,
    "a slice": lambda a: a[10:20],
    "a view of a view": lambda a: a.view(np.uint8)[::2].reshape(-1, 2),
    "another dtype": lambda a: a.view(np.int32),
    "np.asarray": np.asarray,
    "a memoryview": memoryview,
    "a torch tensor": torch.from_numpy,
}


def _snapshot(held: Any) -> np.ndarray:
    return np.array(held.numpy() if isinstance(held, torch.Tensor) else held)


@pytest.mark.parametrize("hold", HOLDERS.values(), ids=HOLDERS.keys())
def test_a_buffer_anyone_still_holds_is_never_lent(hold: Callable[[np.ndarray], Any]) -> None:
    pool = BufferPool()
    a = pool.take(N, np.dtype(np.float32))
    a[:] = 1.5
    first = _address(a)
    held = hold(a)
    before = _snapshot(held)
    del a
    b = pool.take(N, np.dtype(np.float32))
    b[:] = -7.0
    np.testing.assert_array_equal(_snapshot(held), before)
    assert pool.retained_bytes == 2 * MIN_POOLED_BYTES
    # Once the holder lets go, its buffer is the one lent next (b is still in use).
    del held
    c = pool.take(N, np.dtype(np.float32))
    assert _address(c) == first and not np.shares_memory(b, c)


def test_retained_memory_stays_under_the_cap_and_small_arrays_are_not_pooled() -> None:
    pool = BufferPool(max_bytes=3 * MIN_POOLED_BYTES)
    live = [pool.take(N, np.dtype(np.float32)) for _ in range(5)]
    assert pool.retained_bytes == 3 * MIN_POOLED_BYTES
    big = pool.take(4 * N, np.dtype(np.float32))
    assert pool.retained_bytes == 3 * MIN_POOLED_BYTES
    small = pool.take(N - 1, np.dtype(np.float32))
    assert pool.retained_bytes == 3 * MIN_POOLED_BYTES
    # Five distinct arrays, none sharing memory with another.
    arrays = [*live, big, small]
    for i, x in enumerate(arrays):
        for y in arrays[i + 1 :]:
            assert not np.shares_memory(x, y)
    pool.clear()
    assert pool.retained_bytes == 0
    live[0][:] = 3.0  # what was lent out stays usable after clear
    assert live[0][-1] == 3.0


def test_threads_taking_at_once_never_share_a_buffer() -> None:
    pool = BufferPool(max_bytes=4 * MIN_POOLED_BYTES)
    errors: list[str] = []

    def work(tag: int) -> None:
        for _ in range(200):
            a = pool.take(N, np.dtype(np.float32))
            a[:] = tag
            if not (a[0] == tag and a[-1] == tag and a[N // 2] == tag):
                errors.append(f"thread {tag} saw another thread's values")
            del a

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pool.retained_bytes <= 4 * MIN_POOLED_BYTES
