"""Clipping bounds the norm (property-based), keeps direction, leaves small vectors alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from consortia.core.errors import ConfigError
from consortia.privacy.clip import l2_clip

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
vectors = arrays(np.float64, st.integers(1, 64), elements=finite)
clip_norms = st.floats(1e-3, 1e3)


@settings(max_examples=200, deadline=None)
@given(vectors, clip_norms)
def test_clipped_norm_is_bounded(v: np.ndarray, c: float) -> None:
    clipped, norm = l2_clip(v, c)
    assert np.linalg.norm(clipped) <= c * (1 + 1e-9)
    assert norm == pytest.approx(np.linalg.norm(v))


@settings(max_examples=200, deadline=None)
@given(vectors, clip_norms)
def test_direction_preserved(v: np.ndarray, c: float) -> None:
    clipped, norm = l2_clip(v, c)
    if norm > 0:
        scale = min(1.0, c / norm)
        np.testing.assert_allclose(clipped, v * scale, rtol=1e-9, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(vectors)
def test_vectors_within_bound_unchanged(v: np.ndarray) -> None:
    c = float(np.linalg.norm(v)) + 1.0
    clipped, _ = l2_clip(v, c)
    np.testing.assert_array_equal(clipped, v)
    assert clipped is not v


def test_hand_example() -> None:
    clipped, norm = l2_clip(np.array([3.0, 4.0]), 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped, [0.6, 0.8])


def test_float32_stays_float32() -> None:
    clipped, _ = l2_clip(np.array([30.0, 40.0], dtype=np.float32), 5.0)
    assert clipped.dtype == np.float32
    np.testing.assert_allclose(clipped, [3.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_clip_norm(c: float) -> None:
    with pytest.raises(ConfigError, match="clip norm"):
        l2_clip(np.ones(3), c)


def test_rejects_non_flat_and_nan() -> None:
    with pytest.raises(ConfigError, match="flat"):
        l2_clip(np.ones((2, 2)), 1.0)
    with pytest.raises(ConfigError, match="NaN"):
        l2_clip(np.array([1.0, np.nan]), 1.0)
