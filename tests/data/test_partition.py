"""Tests for consortia.data.partition: coverage invariants, determinism, skew, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from consortia.core.errors import PartitionError
from consortia.data import (
    dirichlet,
    iid,
    label_histograms,
    make_partition,
    quantity_skew,
    shards,
)

FIXTURES = Path(__file__).parent / "fixtures"
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.fixture(scope="module")
def digits_train_labels() -> np.ndarray:
    """The digits train split that Flower's reference partitions were made from."""
    x, y = load_digits(return_X_y=True)
    _, _, y_train, _ = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return np.asarray(y_train)


def assert_valid_partition(parts: list[np.ndarray], n_examples: int, n_sites: int) -> None:
    """Each site an int64 sorted array; together every example exactly once."""
    assert len(parts) == n_sites
    for p in parts:
        assert p.dtype == np.int64
        assert p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted ascending, no repeats inside a site
    joined = np.concatenate(parts) if parts else np.empty(0, np.int64)
    np.testing.assert_array_equal(np.sort(joined), np.arange(n_examples))


def sizes(parts: list[np.ndarray]) -> np.ndarray:
    return np.array([len(p) for p in parts])


# --------------------------------------------------------------------------- coverage


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_examples=st.integers(1, 400), seed=SEEDS)
def test_iid_covers_everything_with_sizes_within_one(
    data: st.DataObject, n_examples: int, seed: int
) -> None:
    n_sites = data.draw(st.integers(1, n_examples))
    parts = iid(n_examples, n_sites, seed)
    assert_valid_partition(parts, n_examples, n_sites)
    assert sizes(parts).max() - sizes(parts).min() <= 1


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), max_size=300),
    n_sites=st.integers(1, 30),
    alpha=st.floats(0.01, 100.0),
    seed=SEEDS,
)
def test_dirichlet_covers_everything(
    labels: list[int], n_sites: int, alpha: float, seed: int
) -> None:
    parts = dirichlet(np.array(labels, dtype=np.int64), n_sites, alpha, seed)
    assert_valid_partition(parts, len(labels), n_sites)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_examples=st.integers(1, 400),
    seed=SEEDS,
    distribution=st.sampled_from(["lognormal", "powerlaw"]),
)
def test_quantity_skew_covers_everything_and_respects_min_size(
    data: st.DataObject, n_examples: int, seed: int, distribution: Any
) -> None:
    n_sites = data.draw(st.integers(1, n_examples))
    min_size = data.draw(st.integers(0, n_examples // n_sites))
    parts = quantity_skew(n_examples, n_sites, seed, distribution, min_size=min_size)
    assert_valid_partition(parts, n_examples, n_sites)
    assert sizes(parts).min() >= min_size


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_classes=st.integers(1, 8), seed=SEEDS)
def test_shards_covers_everything(data: st.DataObject, n_classes: int, seed: int) -> None:
    labels = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=300)))
    present = len(np.unique(labels))
    k = data.draw(st.integers(1, present))
    n_sites = data.draw(st.integers(1, max(1, len(labels) // k)))
    parts = shards(labels, n_sites, k, seed)
    assert_valid_partition(parts, len(labels), n_sites)


# --------------------------------------------------------------------------- determinism

LABELS = np.repeat(np.arange(10), 30)  # 300 examples, 10 balanced classes
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.5}),
    ("quantity", {}),
    ("quantity", {"distribution": "powerlaw", "exponent": 1.2, "min_size": 2}),
    ("shards", {"classes_per_site": 2}),
]


@pytest.mark.parametrize(("method", "params"), METHODS)
def test_same_seed_same_partition_other_seed_differs(method: str, params: dict[str, Any]) -> None:
    a = make_partition(method, LABELS, 10, 7, **params)
    b = make_partition(method, LABELS, 10, 7, **params)
    c = make_partition(method, LABELS, 10, 8, **params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert_valid_partition(a, len(LABELS), 10)


def test_dirichlet_reproduces_flower_reference_bit_for_bit(
    digits_train_labels: np.ndarray,
) -> None:
    ref = np.load(FIXTURES / "partition_digits_n100_a0.5_seed0.npz")
    n = int(ref["n_clients"])
    assert n == 100
    parts = dirichlet(digits_train_labels, n, alpha=0.5, seed=0)
    assert len(parts) == n
    for i, p in enumerate(parts):
        expected = ref[f"client_{i}"]
        assert p.dtype == expected.dtype == np.int64
        np.testing.assert_array_equal(p, expected, err_msg=f"client {i}")
    # Same result through the dispatcher a job file would use.
    via_name = make_partition("dirichlet", digits_train_labels, n, 0, alpha=0.5)
    assert all(np.array_equal(x, y) for x, y in zip(parts, via_name, strict=True))


# --------------------------------------------------------------------------- skew


def _mean_label_stats(labels: np.ndarray, parts: list[np.ndarray]) -> tuple[float, float]:
    """Mean over non-empty sites of (largest class share, label entropy in nats)."""
    hist = label_histograms(labels, parts, 10)
    n = hist.sum(axis=1)
    share = hist[n > 0] / n[n > 0, None]
    logs = np.log(np.where(share > 0, share, 1.0))
    entropy = -(share * logs).sum(axis=1)
    return float(share.max(axis=1).mean()), float(entropy.mean())


def test_small_alpha_skews_labels_large_alpha_is_near_iid(
    digits_train_labels: np.ndarray,
) -> None:
    y = digits_train_labels
    skew_max, skew_ent = _mean_label_stats(y, dirichlet(y, 20, alpha=0.1, seed=0))
    flat_max, flat_ent = _mean_label_stats(y, dirichlet(y, 20, alpha=100.0, seed=0))
    # Uniform over 10 classes: max share 0.1, entropy ln 10 = 2.303.
    # alpha=100 measured 0.118 / 2.297; alpha=0.1 measured 0.577 / 0.993.
    assert flat_max < 0.13
    assert flat_ent > 2.25
    assert skew_max > 0.45
    assert skew_ent < 1.3
    assert skew_max > 3 * flat_max


def test_quantity_skew_sizes_are_unequal_iid_sizes_are_not() -> None:
    # 1000 examples over 50 sites, mean 20 each. lognormal(0, 1.5), seed 0 measured
    # min 1, max 128; powerlaw(1.5) seed 0 measured min 6, max 312.
    logn = sizes(quantity_skew(1000, 50, 0, "lognormal", sigma=1.5))
    power = sizes(quantity_skew(1000, 50, 0, "powerlaw", exponent=1.5))
    even = sizes(iid(1000, 50, 0))
    assert logn.max() / logn.min() > 20
    assert power.max() / power.min() > 20
    assert even.max() == even.min() == 20
    assert logn.sum() == power.sum() == 1000


def test_quantity_skew_min_size_is_a_floor_that_binds() -> None:
    # With sigma=3 most of the mass goes to a few sites; the floor of 10 keeps the rest.
    got = sizes(quantity_skew(1000, 50, 0, sigma=3.0, min_size=10))
    assert got.min() == 10
    assert got.sum() == 1000
    # Exactly min_size each when the floor uses up every example.
    assert list(sizes(quantity_skew(100, 10, 3, min_size=10))) == [10] * 10


@pytest.mark.parametrize(("n_sites", "k"), [(10, 1), (20, 2), (25, 2), (30, 4), (60, 2)])
def test_shards_sites_hold_at_most_k_classes_on_balanced_data(n_sites: int, k: int) -> None:
    # 10 classes x 60 examples; n_sites * k divides into shards of 60 / m examples, so no
    # shard straddles two classes and the bound holds exactly.
    labels = np.repeat(np.arange(10), 60)
    for seed in range(5):
        parts = shards(labels, n_sites, k, seed)
        hist = label_histograms(labels, parts, 10)
        assert ((hist > 0).sum(axis=1) <= k).all()
        assert (sizes(parts) == 600 // n_sites).all()


def test_shards_with_one_class_per_site_gives_pure_sites() -> None:
    labels = np.repeat(np.arange(4), 5)
    parts = shards(labels, 4, 1, seed=3)
    classes = sorted(int(np.unique(labels[p])[0]) for p in parts)
    assert classes == [0, 1, 2, 3]
    assert all(len(np.unique(labels[p])) == 1 for p in parts)


# --------------------------------------------------------------------------- histograms


def test_label_histograms_by_hand() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 1]), np.array([2, 3, 4, 5]), np.array([], dtype=np.int64)]
    hist = label_histograms(labels, parts)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 1, 3], [0, 0, 0]])
    assert hist.dtype == np.int64
    assert label_histograms(labels, parts, n_classes=5).shape == (3, 5)


@pytest.mark.parametrize(("method", "params"), METHODS)
def test_label_histogram_rows_sum_to_part_sizes(method: str, params: dict[str, Any]) -> None:
    parts = make_partition(method, LABELS, 12, 1, **params)
    hist = label_histograms(LABELS, parts, 10)
    np.testing.assert_array_equal(hist.sum(axis=1), sizes(parts))
    np.testing.assert_array_equal(hist.sum(axis=0), np.full(10, 30))


@pytest.mark.parametrize(
    ("labels", "parts", "n_classes", "needle"),
    [
        (np.array([0, 1, 2]), [np.array([0, 1, 2])], 2, "n_classes=2"),
        (np.array([0, -1]), [np.array([0, 1])], None, "labels must be >= 0"),
        (np.array([0.5, 1.0]), [np.array([0, 1])], None, "labels must be integers"),
        (np.array([0, 1]), [np.array([0, 2])], None, "part 0 holds indices outside"),
    ],
)
def test_label_histograms_rejects_bad_input(
    labels: np.ndarray, parts: list[np.ndarray], n_classes: int | None, needle: str
) -> None:
    with pytest.raises(PartitionError, match=needle):
        label_histograms(labels, parts, n_classes)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "labels", "n_sites", "params", "needle"),
    [
        ("kmeans", LABELS, 5, {}, "method must be one of"),
        ("iid", LABELS, 0, {}, "n_sites must be an integer >= 1"),
        ("iid", LABELS[:4], 5, {}, "n_sites must be <= the number of examples"),
        ("iid", LABELS, 5, {"alpha": 0.5}, r"unexpected parameter\(s\) \['alpha'\]"),
        ("dirichlet", LABELS, 5, {"alpha": 0.0}, "alpha must be a finite number > 0"),
        ("dirichlet", LABELS, 5, {"alpha": -1.0}, "alpha must be a finite number > 0"),
        ("dirichlet", LABELS, 5, {"alpha": float("nan")}, "alpha must be a finite number"),
        ("dirichlet", LABELS, 5, {}, r"needs parameter\(s\) \['alpha'\]"),
        ("dirichlet", LABELS, 0, {"alpha": 1.0}, "n_sites must be an integer >= 1"),
        ("dirichlet", LABELS, 5, {"alpha": 1.0, "beta": 2}, "unexpected parameter"),
        ("quantity", LABELS[:4], 5, {}, "n_sites must be <= the number of examples"),
        ("quantity", LABELS, 5, {"distribution": "zipf"}, "distribution must be 'lognormal'"),
        ("quantity", LABELS, 5, {"min_size": 61}, "min_size=61 is too large"),
        ("quantity", LABELS, 5, {"min_size": -1}, "min_size must be an integer >= 0"),
        ("quantity", LABELS, 5, {"sigma": 0.0}, "sigma must be a finite number > 0"),
        ("quantity", LABELS, 5, {"distribution": "powerlaw", "exponent": -2}, "exponent must"),
        ("quantity", LABELS, 5, {"distribution": "powerlaw", "exponent": 1e-4}, "overflowed"),
        ("quantity", LABELS, 5, {"alpha": 1.0}, "expected: distribution, exponent"),
        ("quantity", LABELS, 5, {"sigma": 1e5}, "lognormal weights overflowed"),
        ("shards", LABELS, 5, {"classes_per_site": 0}, "classes_per_site must be an integer"),
        ("shards", LABELS, 5, {"classes_per_site": 11}, r"number of classes \(10\), got 11"),
        ("shards", LABELS, 200, {"classes_per_site": 2}, "no shard is empty"),
        ("shards", LABELS, 5, {}, r"needs parameter\(s\) \['classes_per_site'\]"),
        ("iid", LABELS.reshape(30, 10), 5, {}, "labels must be a 1-D array"),
    ],
)
def test_make_partition_rejects_bad_requests(
    method: str, labels: np.ndarray, n_sites: int, params: dict[str, Any], needle: str
) -> None:
    with pytest.raises(PartitionError, match=needle):
        make_partition(method, labels, n_sites, 0, **params)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_is_rejected(seed: Any) -> None:
    with pytest.raises(PartitionError, match="seed must be an integer >= 0"):
        iid(10, 2, seed)
