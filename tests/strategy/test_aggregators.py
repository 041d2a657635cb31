import numpy as np
import pytest

from consortia.strategy.aggregators import (
    AggregationError,
    StreamingMean,
    mean,
    weighted_mean,
)


def test_weighted_mean_by_hand():
    u = [np.array([1.0, 2.0], np.float32), np.array([3.0, 6.0], np.float32)]
    # (1*1 + 3*3) / 4 = 2.5 ; (2*1 + 6*3) / 4 = 5
    np.testing.assert_allclose(weighted_mean(u, [1, 3]), [2.5, 5.0])
    np.testing.assert_allclose(mean(u), [2.0, 4.0])


def test_streaming_equals_blocked_across_block_boundaries():
    rng = np.random.default_rng(1)
    n = (1 << 17) + 123  # more than one block
    updates = [rng.standard_normal(n).astype(np.float32) for _ in range(7)]
    weights = [3, 1, 4, 1, 5, 9, 2]
    acc = StreamingMean(n, np.dtype(np.float32))
    for u, w in zip(updates, weights, strict=True):
        acc.add(u, w)
    ref = np.average(np.stack(updates).astype(np.float64), axis=0, weights=weights)
    np.testing.assert_allclose(acc.result(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weighted_mean(updates, weights), ref, rtol=1e-5, atol=1e-6)
    assert acc.count == 7


def test_unweighted_streaming_ignores_example_counts():
    acc = StreamingMean(2, np.dtype(np.float64), weighted=False)
    acc.add(np.array([0.0, 4.0]), 1000)
    acc.add(np.array([2.0, 0.0]), 1)
    np.testing.assert_allclose(acc.result(), [1.0, 2.0])


def test_zero_weight_update_counts_but_does_not_move_the_mean():
    acc = StreamingMean(1, np.dtype(np.float32))
    acc.add(np.array([5.0], np.float32), 2)
    acc.add(np.array([100.0], np.float32), 0)
    assert acc.result()[0] == 5.0 and acc.count == 2


@pytest.mark.parametrize(
    "updates, weights, message",
    [
        ([], [], "no updates"),
        ([np.ones(2, np.float32)], [0], "total weight is zero"),
        ([np.ones(2, np.float32), np.ones(3, np.float32)], [1, 1], "update 1"),
        ([np.ones(2, np.float32)], [1, 2], "2 weights"),
        ([np.ones(2, np.float32)], [-1], "non-negative"),
        ([np.ones(2, np.int32)], [1], "float32 or float64"),
    ],
)
def test_bad_input_is_named(updates, weights, message):
    with pytest.raises(AggregationError, match=message):
        weighted_mean(updates, weights)


def test_streaming_refuses_mismatched_update():
    acc = StreamingMean(3, np.dtype(np.float32))
    with pytest.raises(AggregationError, match="does not match"):
        acc.add(np.ones(4, np.float32), 1)
    with pytest.raises(AggregationError, match="total weight"):
        acc.result()
