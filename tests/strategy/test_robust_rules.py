"""The robust rules and pre-aggregation steps: numbers checked by hand, ByzFL as the oracle
on random inputs, and a planted outlier that each must keep out of the aggregate."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzfl_oracle import aggregators as byz_agg
from byzfl_oracle import preaggregators as byz_pre
from consortia.strategy.robust import mixing, rules

X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])


# ---- by hand ------------------------------------------------------------------------------


def test_median_and_trimmed_mean_by_hand() -> None:
    x = np.array([[0.0, 10.0], [1.0, -5.0], [2.0, 0.0], [100.0, 1.0]])
    np.testing.assert_allclose(rules.coordinate_median(x), [1.5, 0.5])
    # f=1 drops 0 and 100 in column 0 (mean of 1, 2), -5 and 10 in column 1 (mean of 0, 1)
    np.testing.assert_allclose(rules.trimmed_mean(x, 1), [1.5, 0.5])
    np.testing.assert_allclose(rules.trimmed_mean(x, 0), x.mean(axis=0))


def test_krum_and_multi_krum_by_hand() -> None:
    # Points on a line: 0, 1, 3, 10. f=1: each scores the mean squared distance to its
    # n - f - 1 = 2 nearest others: 0 -> (1+9)/2=5, 1 -> (1+4)/2=2.5, 3 -> (4+9)/2=6.5,
    # 10 -> (49+81)/2=65.
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    np.testing.assert_allclose(rules.krum_scores(x, 1), [5.0, 2.5, 6.5, 65.0])
    np.testing.assert_allclose(rules.krum(x, 1), [1.0])
    # multi-krum, m = n - f = 3 best: 1, 0, 3 -> 4/3
    np.testing.assert_allclose(rules.multi_krum(x, 1), [4.0 / 3.0])
    np.testing.assert_allclose(rules.multi_krum(x, 1, m=2), [0.5])


def test_bulyan_by_hand() -> None:
    # n=7, f=1: theta = 5 rows picked by repeated Krum, beta = 3 per coordinate nearest the
    # median of the picked. The two far rows (50, -40) are never picked: the picks are
    # 0, 1, 2, 3, 4, the median 2 and the 3 nearest 1, 2, 3 -> 2.
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [50.0], [-40.0]])
    np.testing.assert_allclose(rules.bulyan(x, 1), [2.0])
    with pytest.raises(rules.RuleError, match=r"n >= 4f \+ 3"):
        rules.bulyan(x[:6], 1)


def test_geometric_median_by_hand() -> None:
    # Three corners of a square and its far corner twice: the geometric median of
    # (0,0), (2,0), (0,2), (2,2) is the centre (1,1) by symmetry.
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(rules.geometric_median(x, iters=50), [1.0, 1.0], atol=1e-9)
    # On a line with points 0, 0, 0, 10 the median is 0 (the mean would be 2.5).
    line = np.array([[0.0], [0.0], [0.0], [10.0]])
    assert abs(rules.geometric_median(line, iters=200, nu=1e-9)[0]) < 1e-3


def test_centered_clipping_by_hand() -> None:
    # Centre 0, tau 1: (3, 4) has norm 5 and is clipped to (0.6, 0.8); (0.5, 0) is kept.
    x = np.array([[3.0, 4.0], [0.5, 0.0]])
    np.testing.assert_allclose(rules.centered_clipping(x, np.zeros(2), 1.0), [0.55, 0.4])
    # From centre (3, 4) the first row is the centre itself, the second is 4.7 away.
    out = rules.centered_clipping(x, np.array([3.0, 4.0]), 1.0)
    d = np.array([-2.5, -4.0]) / np.hypot(2.5, 4.0)
    np.testing.assert_allclose(out, np.array([3.0, 4.0]) + d / 2)


def test_norm_bounded_mean_by_hand() -> None:
    x = np.array([[3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(rules.norm_bounded_mean(x, 1.0), [0.3, 0.9])
    np.testing.assert_allclose(rules.norm_bounded_mean(x, 1.0, np.array([1.0, 3.0])), [0.15, 0.95])


def test_fltrust_by_hand() -> None:
    root = np.array([1.0, 0.0])
    # Row 0 along the root: trust 1, rescaled to |root| = 1 -> (1, 0). Row 1 at 45 degrees:
    # trust cos = 1/sqrt2, rescaled to (1/sqrt2, 1/sqrt2). Row 2 opposite: trust 0.
    x = np.array([[5.0, 0.0], [2.0, 2.0], [-9.0, 0.0]])
    c = 1 / np.sqrt(2)
    expected = (np.array([1.0, 0.0]) + c * np.array([c, c])) / (1 + c)
    np.testing.assert_allclose(rules.fltrust(x, root), expected)
    np.testing.assert_allclose(rules.fltrust(x[2:], root), [0.0, 0.0])


def test_mixing_by_hand() -> None:
    x = np.array([[0.0], [1.0], [10.0]])
    # NNM f=1: each row -> mean of its 2 nearest (itself included)
    np.testing.assert_allclose(mixing.nearest_neighbour_mixing(x, 1), [[0.5], [0.5], [5.5]])
    np.testing.assert_allclose(mixing.bucketing(x, 2, np.array([2, 0, 1])), [[5.0], [1.0]])
    # ARC f=1, n=3: k = floor(2 * 1/3 * 2) = 1 row clipped, to the second largest norm (1)
    np.testing.assert_allclose(mixing.adaptive_robust_clipping(x, 1), [[0.0], [1.0], [1.0]])
    np.testing.assert_allclose(mixing.adaptive_robust_clipping(x, 0), x)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rules.trimmed_mean(X, 2), r"2f < n"),
        (lambda: rules.krum(X, 2), r"2f < n"),
        (lambda: rules.multi_krum(X, 1, m=4), r"m must be in"),
        (lambda: rules.coordinate_median(np.zeros((0, 3))), r"non-empty"),
        (lambda: rules.centered_clipping(X, np.zeros(3), 0.0), r"tau must be > 0"),
        (lambda: mixing.nearest_neighbour_mixing(X, 3), r"0 <= f < n"),
        (lambda: mixing.bucketing(X, 2, np.array([0, 0, 1])), r"every row once"),
    ],
)
def test_impossible_requests_are_named(call, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rules.RuleError, match=message):
        call()


# ---- ByzFL on random inputs ----------------------------------------------------------------

SEEDS = range(8)


def _random(seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 16))
    d = int(rng.integers(1, 40))
    x = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0)
    x[: int(rng.integers(0, n // 3 + 1))] *= 25.0  # some rows far out
    f = int(rng.integers(0, (n - 1) // 2 + 1))
    return x, f


@pytest.mark.parametrize("seed", SEEDS)
def test_rules_equal_byzfl_on_random_inputs(seed: int) -> None:
    x, f = _random(seed)
    agg = byz_agg()
    np.testing.assert_allclose(rules.coordinate_median(x), agg.Median()(x), rtol=1e-12)
    np.testing.assert_allclose(rules.trimmed_mean(x, f), agg.TrMean(f)(x), rtol=1e-10)
    np.testing.assert_allclose(rules.krum(x, f), agg.Krum(f)(x), rtol=1e-12)
    np.testing.assert_allclose(rules.multi_krum(x, f), agg.MultiKrum(f)(x), rtol=1e-10)
    centre = np.random.default_rng(seed + 100).standard_normal(x.shape[1])
    cc = agg.CenteredClipping(L=3, tau=2.5)
    cc.m = centre.copy()
    np.testing.assert_allclose(rules.centered_clipping(x, centre, 2.5, 3), cc(x), rtol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_norm_bounded_mean_equals_byzfl_clipping_then_average(seed: int) -> None:
    x, _ = _random(seed)
    bound = float(np.median(np.linalg.norm(x, axis=1)))
    clipped = byz_pre().Clipping(bound)(x.copy())
    np.testing.assert_allclose(
        rules.norm_bounded_mean(x, bound), byz_agg().Average()(clipped), rtol=1e-10
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_geometric_median_converges_to_byzfl(seed: int) -> None:
    # ByzFL starts from zero, RFA from the mean: both converge to the same point.
    x, _ = _random(seed)
    ours = rules.geometric_median(x, nu=1e-8, iters=3000, tol=0.0)
    theirs = byz_agg().GeometricMedian(nu=1e-8, T=3000)(x)
    scale = np.abs(x).max()
    np.testing.assert_allclose(ours, theirs, atol=1e-6 * scale)


@pytest.mark.parametrize("seed", SEEDS)
def test_mixing_equals_byzfl_on_random_inputs(seed: int) -> None:
    x, f = _random(seed)
    pre = byz_pre()
    np.testing.assert_allclose(
        mixing.nearest_neighbour_mixing(x, f), pre.NNM(f)(x.copy()), rtol=1e-10
    )
    np.testing.assert_allclose(
        mixing.adaptive_robust_clipping(x, f), pre.ARC(f)(x.copy()), rtol=1e-10
    )
    size = 1 + seed % 4
    np.random.seed(seed)
    permutation = np.random.permutation(len(x))
    np.random.seed(seed)
    np.testing.assert_allclose(
        mixing.bucketing(x, size, permutation), pre.Bucketing(size)(x.copy()), rtol=1e-10
    )


def test_float32_rows_agree_with_float64_oracle() -> None:
    x, f = _random(3)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(
        rules.krum(x32, f), byz_agg().Krum(f)(torch.from_numpy(x32)).numpy(), rtol=1e-6
    )


# ---- a planted outlier ---------------------------------------------------------------------


def _honest_and_outlier(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    honest = 1.0 + 0.1 * rng.standard_normal((9, 20))
    return honest, np.vstack([honest, np.full((1, 20), -1000.0)])


ROBUST = {
    "median": lambda x: rules.coordinate_median(x),
    "trimmed_mean": lambda x: rules.trimmed_mean(x, 1),
    "krum": lambda x: rules.krum(x, 1),
    "multi_krum": lambda x: rules.multi_krum(x, 1),
    "bulyan": lambda x: rules.bulyan(x, 1),
    "geometric_median": lambda x: rules.geometric_median(x, iters=100),
    "centered_clipping": lambda x: rules.centered_clipping(x, np.ones(20), 1.0, 3),
    "norm_bounded_mean": lambda x: rules.norm_bounded_mean(x, 5.0),
    "fltrust": lambda x: rules.fltrust(x, np.ones(20)),
    "nnm+median": lambda x: rules.coordinate_median(mixing.nearest_neighbour_mixing(x, 1)),
    "arc+mean": lambda x: mixing.adaptive_robust_clipping(x, 1).mean(axis=0),
}


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_a_planted_outlier_barely_moves_the_aggregate(name: str) -> None:
    honest, poisoned = _honest_and_outlier()
    mean_shift = np.linalg.norm(poisoned.mean(axis=0) - honest.mean(axis=0))  # ~ 447
    shift = np.linalg.norm(ROBUST[name](poisoned) - honest.mean(axis=0))
    assert mean_shift > 400
    assert shift < 1.0, f"{name} moved {shift:.3f} (the mean moves {mean_shift:.0f})"


# ---- invariants ----------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n = draw(st.integers(3, 11))
    d = draw(st.integers(1, 6))
    x = np.array(draw(st.lists(finite, min_size=n * d, max_size=n * d))).reshape(n, d)
    return x, draw(st.integers(0, (n - 3) // 4))


IN_HULL = {
    "median": lambda x, f: rules.coordinate_median(x),
    "trimmed_mean": lambda x, f: rules.trimmed_mean(x, f),
    "krum": lambda x, f: rules.krum(x, f),
    "multi_krum": lambda x, f: rules.multi_krum(x, f),
    "bulyan": lambda x, f: rules.bulyan(x, f),
    "geometric_median": lambda x, f: rules.geometric_median(x),
}


@given(rounds())
@settings(max_examples=60)
def test_every_rule_stays_within_the_coordinate_range_and_ignores_row_order(
    case: tuple[np.ndarray, int],
) -> None:
    x, f = case
    lo, hi = x.min(axis=0), x.max(axis=0)
    slack = 1e-9 * (1 + np.abs(x).max())
    flipped = x[::-1].copy()
    for name, rule in IN_HULL.items():
        out = rule(x, f)
        assert np.all(out >= lo - slack) and np.all(out <= hi + slack), name
        if name in ("median", "trimmed_mean", "geometric_median"):
            np.testing.assert_allclose(rule(flipped, f), out, rtol=1e-9, atol=slack)


def _bulyan_by_the_paper(x: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al. 2018, written out loop by loop (ByzFL has no Bulyan to compare with)."""
    remaining = [np.array(r) for r in x]
    picked = []
    while len(picked) < len(x) - 2 * f:
        n = len(remaining)
        scores = []
        for i, xi in enumerate(remaining):
            d = sorted(float(np.sum((xi - xj) ** 2)) for j, xj in enumerate(remaining) if j != i)
            scores.append(np.mean(d[: n - f - 1]) if n - f - 1 > 0 else 0.0)
        picked.append(remaining.pop(int(np.argmin(scores))))
    chosen = np.array(picked)
    beta = len(chosen) - 2 * f
    out = np.empty(x.shape[1])
    for k in range(x.shape[1]):
        col = chosen[:, k]
        med = np.median(col)
        out[k] = np.mean(sorted(col, key=lambda v: abs(v - med))[:beta])
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_bulyan_equals_the_papers_definition_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(7, 16))
    x = rng.standard_normal((n, int(rng.integers(1, 20))))
    f = int(rng.integers(0, (n - 3) // 4 + 1))
    np.testing.assert_allclose(rules.bulyan(x, f), _bulyan_by_the_paper(x, f), rtol=1e-10)
