"""Each site's neighbours: a randomly relabelled Harary graph, and the degree k it needs.

SecAgg+ (Bell, Bonawitz, Gascon, Lepoint and Raykova, CCS 2020) replaces SecAgg's complete
graph by a sparse one: a site agrees masks with, and shares its secrets among, only its k
neighbours, k of order log n. Bell et al. analyse random graphs; we use a randomly
relabelled Harary graph H(k, n) -- the sites on a ring in a random order, each joined to the
k/2 nearest on either side -- which is exactly k-regular, and compute the failure bound below
for that construction itself. The order comes from a 32-byte seed the server draws and
publishes, hashed with each site id, so every site can recompute the graph and check that
the server did not pick its neighbours.

Choosing k (``choose_k``). The protocol fails -- leaks more than the sum, or cannot finish --
only if the graph is bad for the sets of dropped (D) and corrupt (C) sites, which are fixed
independently of the random order. The graph properties are those Bell et al. 2020 require
in Section 3 for their correctness and security theorems (our reading; the theorem numbers
were not re-checked in this session):

  E1. a site has more than k - t neighbours unavailable (dropped or corrupt): its secrets
      cannot be rebuilt, the round fails;
  E2. a site has at least 2t - k - 1 corrupt neighbours: then the server, asking each
      honest neighbour for one kind of share and the corrupt ones for both, and taking the
      site's own self-mask share (each site keeps one share of each secret, t-of-(k + 1), and
      reveals its own self-mask share when it survives), can collect t self-mask shares *and*
      t mask-key shares, and unmask that site (t > (k + c + 1) / 2 stops this);
  E3. the honest survivors' graph is disconnected: the server learns partial sums.

Under the random order each site's neighbours are a uniform k-subset of the other n - 1, so
with hypergeometric tails X_S ~ Hyp(n - 1, |S|, k) and the union bound over the n sites,

  P(fail) <= n [ P(X_{D+C} > k - t) + P(X_C >= 2t - k - 1) ] + n prod_{i<k/2} (m - i) / (n - i),

with |D| = ceil(delta n), |C| = ceil(gamma n), m = |D| + |C|. The last term bounds E3: on the
ring, the survivors stay connected unless k/2 consecutive positions are all removed (two such
runs are needed to cut a ring; we count one). ``choose_k`` returns the smallest k (even, or
n - 1 for the complete graph, where E3 cannot happen) for which some t makes the bound at most
2^-sigma, and ``threshold_for`` that t. It is our union bound, exact in its tails, not the
paper's closed-form estimate; it is conservative (a bound, not the probability), which the
tests check against exhaustive enumeration on small graphs.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from consortia.secagg.context import SecAggError, check_site_id, encode_parts

GRAPH_SEED_BYTES = 32


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SecAggError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise SecAggError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _check_n(n_sites: int) -> int:
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 2:
        raise SecAggError(f"n_sites must be an int >= 2, got {n_sites!r}")
    return n_sites


@dataclass(frozen=True)
class GraphChoice:
    """The degree, the Shamir threshold, and log2 of the failure bound they achieve."""

    k: int
    threshold: int
    log2_failure: float


def _counts(n: int, dropout_rate: float, corrupt_fraction: float) -> tuple[int, int]:
    dropped = math.ceil(_check_fraction("dropout_rate", dropout_rate) * n)
    corrupt = math.ceil(_check_fraction("corrupt_fraction", corrupt_fraction) * n)
    return min(n, dropped + corrupt), min(n, corrupt)


def _bounds(n: int, k: int, thresholds: np.ndarray, removed: int, corrupt: int) -> np.ndarray:
    """The union bound for each threshold in ``thresholds`` (vectorised over t)."""
    # imported here: scipy.stats takes ~2 s to import, and only the server chooses k; every
    # site process imports this module for the graph alone
    from scipy.stats import hypergeom

    # neighbours are a uniform k-subset of the other n - 1 sites (counting the site itself
    # among D or C only makes the tails larger, so min(n - 1, .) is conservative)
    unavailable = hypergeom.sf(k - thresholds, n - 1, min(n - 1, removed), k)
    exposed = hypergeom.sf(2 * thresholds - k - 2, n - 1, min(n - 1, corrupt), k)
    cut = 0.0
    if k < n - 1:
        cut = float(np.prod([max(0, removed - i) / (n - i) for i in range(k // 2)]))
    return np.asarray(n * (unavailable + exposed + cut), dtype=np.float64)


def failure_bound(
    n_sites: int, k: int, threshold: int, dropout_rate: float, corrupt_fraction: float
) -> float:
    """The union bound above on P(E1 or E2 or E3) for one round (may exceed 1)."""
    n = _check_n(n_sites)
    if not 1 <= k <= n - 1 or (k < n - 1 and k % 2):
        raise SecAggError(f"k must be even and in [2, n - 1), or n - 1, got {k} for n = {n}")
    if not 1 <= threshold <= k:
        raise SecAggError(f"threshold must be in [1, k = {k}], got {threshold}")
    removed, corrupt = _counts(n, dropout_rate, corrupt_fraction)
    return float(_bounds(n, k, np.array([threshold]), removed, corrupt)[0])


def choose(
    n_sites: int, dropout_rate: float, corrupt_fraction: float, sigma: float = 40
) -> GraphChoice:
    """The smallest k, and its best threshold, with failure bound at most 2^-sigma."""
    n = _check_n(n_sites)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise SecAggError(f"sigma must be finite and > 0, got {sigma!r}")
    target = 2.0**-sigma
    degrees = [k for k in range(2, n - 1, 2)] + [n - 1]
    removed, corrupt = _counts(n, dropout_rate, corrupt_fraction)
    bound = math.inf
    for k in degrees:
        # t > (k + 1)/2: otherwise the k + 1 holders' honest shares alone could rebuild both
        thresholds = np.arange((k + 1) // 2 + 1, k + 1)
        bounds = _bounds(n, k, thresholds, removed, corrupt)
        best = int(np.argmin(bounds))
        bound = float(bounds[best])
        if bound <= target:
            log2 = math.log2(bound) if bound > 0 else -math.inf
            return GraphChoice(k, int(thresholds[best]), log2)
    raise SecAggError(
        f"no neighbour count keeps the failure bound under 2^-{sigma} for {n} sites with "
        f"dropout rate {dropout_rate} and corrupt fraction {corrupt_fraction}: the best, "
        f"the complete graph, gives 2^{math.log2(max(bound, 1e-300)):.1f}"
    )


def choose_k(n_sites: int, dropout_rate: float, corrupt_fraction: float, sigma: float = 40) -> int:
    """The neighbour count k for SecAgg+ (see the module docstring for the bound)."""
    return choose(n_sites, dropout_rate, corrupt_fraction, sigma).k


def threshold_for(
    n_sites: int, dropout_rate: float, corrupt_fraction: float, sigma: float = 40
) -> int:
    """The Shamir threshold t that goes with ``choose_k``'s k."""
    return choose(n_sites, dropout_rate, corrupt_fraction, sigma).threshold


def ring_order(sites: list[int] | tuple[int, ...], seed: bytes) -> list[int]:
    """The sites in the random ring order the published ``seed`` determines."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != GRAPH_SEED_BYTES:
        raise SecAggError(f"graph seed must be {GRAPH_SEED_BYTES} bytes")
    ids = [check_site_id(s) for s in sites]
    if len(set(ids)) != len(ids):
        raise SecAggError("site ids must be distinct")
    return list(_ring_order(tuple(sorted(ids)), bytes(seed)))


@functools.lru_cache(maxsize=4)
def _ring_order(ids: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    """Cached: the order is a function of public values only, and every site of a round
    computes the same one (in simulation, a pool worker holds hundreds of those sites)."""
    # rank(site) = SHA-256(encode_parts(domain, "ring", seed, site)); the common prefix is
    # hashed once (every site ranks all n sites each round: at n = 500 this is most of it)
    prefix = hashlib.sha256(encode_parts("consortia.secagg/v1", "ring", bytes(seed)))

    def rank(site: int) -> bytes:
        h = prefix.copy()
        h.update(encode_parts(site))
        return h.digest()

    return tuple(sorted(ids, key=rank))


def _check_degree(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n - 1:
        raise SecAggError(f"k must be an int in [2, n - 1 = {n - 1}], got {k!r}")
    if k % 2 and k != n - 1:
        raise SecAggError(f"k must be even below n - 1 (k/2 neighbours each side), got {k}")


def neighbours(
    sites: list[int] | tuple[int, ...], k: int, seed: bytes
) -> dict[int, frozenset[int]]:
    """Each site's k neighbours in the Harary graph on the seeded ring order (symmetric)."""
    order = ring_order(sites, seed)
    n = _check_n(len(order))
    _check_degree(k, n)
    if k == n - 1:
        return {s: frozenset(order) - {s} for s in order}
    half = k // 2
    return {
        s: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d)
        for i, s in enumerate(order)
    }


def neighbours_of(
    sites: list[int] | tuple[int, ...], k: int, seed: bytes, site: int
) -> frozenset[int]:
    """``neighbours(sites, k, seed)[site]`` without building the other n - 1 sets: what a
    site computes for itself each round."""
    order = ring_order(sites, seed)
    n = _check_n(len(order))
    _check_degree(k, n)
    if site not in order:
        raise SecAggError(f"site {site} is not among the {n} sites")
    i, half = order.index(site), k // 2
    if k == n - 1:
        return frozenset(order) - {site}
    return frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d)
