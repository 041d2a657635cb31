"""Audit scores by hand: robust z-scores, cosines, distance to the median, the sketch."""

import numpy as np
import pytest

from consortia.strategy.robust.audit import (
    SKETCH,
    AuditThresholds,
    Sketcher,
    reasons,
    robust_z,
    scores,
)


def test_robust_z_by_hand() -> None:
    # median 3, |v - 3| = 2, 1, 0, 1, 97: MAD 1, sigma 1.4826
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    np.testing.assert_allclose(z, np.array([-2.0, -1.0, 0.0, 1.0, 97.0]) / 1.4826)


def test_scores_by_hand() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-4.0, -4.0]])
    aggregate = np.array([1.0, 1.0])
    previous = [None, np.array([0.0, 2.0]), np.array([1.0, -1.0]), None]
    rows = scores(x, aggregate, previous, [r for r in x], np.array([0.0, -1.0]))
    c = 1 / np.sqrt(2)
    assert [r["cos_aggregate"] for r in rows] == pytest.approx([c, c, 1.0, -1.0])
    assert [r["cos_last_aggregate"] for r in rows] == pytest.approx([0.0, -1.0, -c, c])
    assert scores(x, aggregate, previous, list(x))[0]["cos_last_aggregate"] is None
    assert rows[0]["cos_previous"] is None and rows[1]["cos_previous"] == pytest.approx(1.0)
    assert rows[2]["cos_previous"] == pytest.approx(0.0)
    # norms 1, 1, sqrt2, sqrt32: median (1 + sqrt2) / 2
    assert [r["norm"] for r in rows] == pytest.approx([1.0, 1.0, np.sqrt(2), np.sqrt(32)])
    # coordinate median (0.5, 0.5): distances sqrt(.5), sqrt(.5), sqrt(.5), sqrt(40.5)
    assert rows[3]["median_distance"] == pytest.approx(np.sqrt(40.5))
    assert rows[3]["norm_z"] > 5 and rows[3]["median_distance_z"] > 3.5
    # leave-one-out: row 2 (1, 1) against the mean of the others (-1, -1): cosine -1
    assert rows[2]["cos_others"] == pytest.approx(-1.0)
    # row 0 against the mean of (0,1), (1,1), (-4,-4): (-1, -2/3): cosine -1 / sqrt(13/9)
    assert rows[0]["cos_others"] == pytest.approx(-1 / np.sqrt(13 / 9))
    assert [r["max_cos_other"] for r in rows] == pytest.approx([c, c, c, -c])
    assert reasons(rows[3], AuditThresholds()) == ["norm_z"]
    every = AuditThresholds(min_cos_aggregate=0.0, max_median_distance_z=3.5, min_cos_others=0.0)
    assert reasons(rows[3], every) == [
        "norm_z",
        "median_distance_z",
        "cos_aggregate",
        "cos_others",
    ]
    assert reasons(rows[2], AuditThresholds()) == []
    assert reasons(rows[2], AuditThresholds(min_cos_previous=0.5)) == ["cos_previous"]


def test_identical_updates_are_flagged_as_duplicates() -> None:
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]])
    rows = scores(x, x.mean(axis=0), [None] * 4, list(x))
    assert [r["max_cos_other"] for r in rows][2:] == pytest.approx([1.0, 1.0])
    # (1,0,0) and (0,1,0) are sqrt2 apart, each of norm 1; the two (2,2,2) coincide
    assert [r["nearest_other"] for r in rows] == pytest.approx([np.sqrt(2), np.sqrt(2), 0, 0])
    assert [reasons(r, AuditThresholds()) for r in rows] == [[], [], ["nearest_other"]] * 1 + [
        ["nearest_other"]
    ]


def test_small_models_are_kept_exactly_and_large_ones_sketched() -> None:
    small = Sketcher(10)
    u = np.arange(10.0)
    np.testing.assert_array_equal(small(u), u)
    big = Sketcher(200_000)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(200_000)
    b = 0.6 * a + 0.8 * rng.standard_normal(200_000)  # cosine about 0.6
    sa, sb = big(a), big(b)
    assert sa.shape == (SKETCH,)
    true = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert sa @ sb / (np.linalg.norm(sa) * np.linalg.norm(sb)) == pytest.approx(true, abs=0.05)
    np.testing.assert_array_equal(Sketcher(200_000)(a), sa)  # the same hash every time
