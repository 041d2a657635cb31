"""Fixed-point encoding: the stated error bound, no wrap, unbiased rounding, hostile input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortia.secagg.context import SecAggError
from consortia.secagg.encoding import FixedPoint, bits_for, max_level
from consortia.secagg.masking import ring_sum


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    clip=st.floats(0.01, 100),
    scale=st.floats(1.0, 1e6),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_sum_is_within_n_over_scale(n: int, clip: float, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fp = FixedPoint.for_sites(n, clip, scale)
    updates = rng.uniform(-2 * clip, 2 * clip, size=(n, 17))
    total = ring_sum([fp.encode(u, rng) for u in updates], fp.bits)
    decoded = fp.decode_sum(total, n)
    clipped = np.clip(updates, -clip, clip).sum(axis=0)
    bound = n / scale
    assert np.all(np.abs(decoded - clipped) <= bound + 1e-9 * (1 + n * clip))


@given(n=st.integers(1, 10_000), clip=st.floats(1e-3, 1e3), scale=st.floats(1e-2, 1e6))
def test_bits_hold_the_largest_sum_and_no_fewer_would(n: int, clip: float, scale: float) -> None:
    bits = bits_for(n, clip, scale)
    peak = n * max_level(clip, scale)
    assert peak < 2**bits
    assert peak >= 2 ** (bits - 1)


def test_worst_case_inputs_do_not_wrap() -> None:
    fp = FixedPoint.for_sites(7, 1.0, 1000.0)
    rng = np.random.default_rng(0)
    encodings = [fp.encode(np.full(5, 50.0), rng) for _ in range(7)]
    assert all(int(e.max()) == fp.level for e in encodings)
    np.testing.assert_allclose(fp.decode_sum(ring_sum(encodings, fp.bits), 7), 7.0)


def test_stochastic_rounding_is_unbiased() -> None:
    fp = FixedPoint(1.0, 10.0, 16)
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.123)  # scaled: 11.23, between two levels
    enc = fp.encode(x, rng).astype(np.float64)
    mean = enc.mean() / fp.scale - fp.clip
    # the std of one rounding is <= 0.5 / scale; the mean over 2e5 has std ~1.1e-4
    assert abs(mean - 0.123) < 6e-4
    assert set(np.unique(enc)) == {11.0, 12.0}


@pytest.mark.parametrize("bad", [np.array([0.0, np.nan]), np.array([np.inf]), np.zeros((2, 2))])
def test_bad_updates_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(SecAggError, match="update"):
        FixedPoint(1.0, 10.0, 16).encode(bad, np.random.default_rng(0))


def test_a_sum_larger_than_n_sites_can_make_is_refused() -> None:
    fp = FixedPoint.for_sites(3, 1.0, 10.0)
    with pytest.raises(SecAggError, match="index 1"):
        fp.decode_sum(np.array([0, 3 * fp.level + 1], dtype=np.uint64), 3)
    with pytest.raises(SecAggError, match="exceed"):
        fp.decode_sum(np.zeros(2, dtype=np.uint64), fp.max_sites + 1)


@pytest.mark.parametrize(
    ("args", "field"),
    [((0, 1.0, 1.0), "n_sites"), ((2, -1.0, 1.0), "clip"), ((2, 1.0, float("inf")), "scale")],
)
def test_bad_parameters_name_the_field(args: tuple, field: str) -> None:
    with pytest.raises(SecAggError, match=field):
        bits_for(*args)


def test_too_many_bits_is_refused() -> None:
    with pytest.raises(SecAggError, match="bits"):
        bits_for(2**40, 1.0, 2.0**40)
    with pytest.raises(SecAggError, match="bits"):
        FixedPoint(1.0, 1000.0, 4)
