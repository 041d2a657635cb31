"""The neighbour graph is regular, symmetric and reproducible; k meets its failure bound."""

import itertools
import math

import pytest

from consortia.secagg.context import SecAggError
from consortia.secagg.neighbours import (
    choose,
    choose_k,
    failure_bound,
    neighbours,
    ring_order,
    threshold_for,
)

SEED = bytes(range(32))


@pytest.mark.parametrize(("n", "k"), [(5, 2), (10, 4), (21, 8), (30, 29), (6, 5)])
def test_graph_is_k_regular_symmetric_and_reproducible(n: int, k: int) -> None:
    sites = [3 * i + 1 for i in range(n)]
    graph = neighbours(sites, k, SEED)
    assert set(graph) == set(sites)
    for s, near in graph.items():
        assert len(near) == k and s not in near
        assert all(s in graph[j] for j in near)
    assert graph == neighbours(list(reversed(sites)), k, SEED)  # input order does not matter
    assert ring_order(sites, SEED) != ring_order(sites, bytes(32)) or n < 4


def test_bad_graph_requests_are_refused() -> None:
    with pytest.raises(SecAggError, match="even"):
        neighbours(list(range(10)), 3, SEED)
    with pytest.raises(SecAggError, match="distinct"):
        neighbours([1, 1, 2], 2, SEED)
    with pytest.raises(SecAggError, match="seed"):
        neighbours([1, 2, 3], 2, b"short")
    with pytest.raises(SecAggError, match="k must be"):
        neighbours([1, 2, 3], 3, SEED)


def _exact_failure(n: int, k: int, t: int, dropped: set[int], corrupt: set[int]) -> float:
    """P(E1 or E2 or E3) by enumerating every ring order of n sites (n! orders)."""
    bad = 0
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        half = k // 2
        graph = {
            s: {order[(i + d) % n] for d in range(-half, half + 1) if d}
            if k < n - 1
            else set(range(n)) - {s}
            for i, s in enumerate(order)
        }
        unavailable = dropped | corrupt
        e1 = any(len(graph[s] & unavailable) > k - t for s in range(n))
        e2 = any(len(graph[s] & corrupt) >= 2 * t - k - 1 for s in range(n))
        alive = [s for s in range(n) if s not in unavailable]
        reached, frontier = {alive[0]}, [alive[0]]
        while frontier:
            for j in graph[frontier.pop()] & set(alive):
                if j not in reached:
                    reached.add(j)
                    frontier.append(j)
        bad += e1 or e2 or len(reached) < len(alive)
    return bad / len(orders)


@pytest.mark.parametrize(
    ("n", "k", "t", "rates"), [(7, 2, 2, (0.1, 0.0)), (8, 4, 3, (0.1, 0.1)), (8, 2, 2, (0.2, 0.0))]
)
def test_the_bound_is_never_below_the_exact_probability(
    n: int, k: int, t: int, rates: tuple[float, float]
) -> None:
    delta, gamma = rates
    dropped = set(range(math.ceil(delta * n)))
    corrupt = set(range(len(dropped), len(dropped) + math.ceil(gamma * n)))
    exact = _exact_failure(n, k, t, dropped, corrupt)
    assert 0 < exact <= failure_bound(n, k, t, delta, gamma)


def test_hand_checked_values() -> None:
    # no dropouts and no corruption: nothing can fail, the ring (k = 2, t = 2) suffices
    assert choose(100, 0.0, 0.0).k == 2 and threshold_for(100, 0.0, 0.0) == 2
    # n = 10, one dropout (ceil(0.05 * 10)), k = 2, t = 2: E1 is "the dropped site is one of
    # my 2 neighbours among 9", 2/9 per site; E3 counts a run of k/2 = 1 removed position
    # (conservatively: one run cannot cut a ring), 1/10 per start; union over 10 sites
    assert failure_bound(10, 2, 2, 0.05, 0.0) == pytest.approx(10 * 2 / 9 + 10 * 1 / 10)
    # complete graph (k = n - 1), one dropout and one corrupt site, t = 6 of 9: every site
    # has at most 2 unavailable neighbours (<= k - t = 3) and 1 corrupt one (< 2t - k = 3)
    assert failure_bound(10, 9, 6, 0.1, 0.1) == 0.0
    # t = 5: 2t - k = 1, and the 9 non-corrupt sites all neighbour the corrupt one: 10 * 9/9
    assert failure_bound(10, 9, 5, 0.1, 0.1) == pytest.approx(10.0)


def test_k_grows_with_dropouts_corruption_and_sigma() -> None:
    n = 1000
    ks = [choose_k(n, d, 0.0) for d in (0.0, 0.01, 0.05, 0.1, 0.2)]
    assert ks == sorted(ks) and ks[0] < ks[-1]
    ks = [choose_k(n, 0.05, g) for g in (0.0, 0.01, 0.05, 0.1)]
    assert ks == sorted(ks) and ks[0] < ks[-1]
    ks = [choose_k(n, 0.05, 0.05, sigma) for sigma in (10, 20, 40, 80)]
    assert ks == sorted(ks) and ks[0] < ks[-1]


@pytest.mark.parametrize(
    ("n", "delta", "gamma"), [(100, 0.05, 0.0), (1000, 0.1, 0.05), (10_000, 0.05, 0.05)]
)
def test_choice_meets_the_target_and_is_minimal(n: int, delta: float, gamma: float) -> None:
    c = choose(n, delta, gamma)
    assert failure_bound(n, c.k, c.threshold, delta, gamma) <= 2.0**-40
    assert c.threshold > c.k / 2
    if c.k > 2:
        smaller = c.k - 2
        assert all(
            failure_bound(n, smaller, t, delta, gamma) > 2.0**-40
            for t in range(smaller // 2 + 1, smaller + 1)
        )
    assert c.k < n / 5  # sparse: the point of SecAgg+ at these sizes


def test_impossible_targets_are_refused() -> None:
    with pytest.raises(SecAggError, match="no neighbour count"):
        choose_k(3, 0.3, 0.3)
    with pytest.raises(SecAggError, match="dropout_rate"):
        choose_k(10, 1.0, 0.0)
    with pytest.raises(SecAggError, match="n_sites"):
        choose_k(1, 0.0, 0.0)
