"""Split one data set into per-site index sets, to simulate a federation on one machine.

Every partitioner is a pure function of its arguments: all randomness comes from
``numpy.random.default_rng(seed)``, so a benchmark that names (method, params, seed) names
one exact federation, and the same partition can be rebuilt by anyone, including other
frameworks. Each returns ``list[np.ndarray]``: one sorted int64 array of row indices per site,
together covering every example exactly once. Sites may be empty where the method allows it
(``dirichlet`` with a small alpha); they are kept, so that site ``i`` always means the same
thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from consortia.core.errors import PartitionError

Parts = list[np.ndarray]
Distribution = Literal["lognormal", "powerlaw"]

__all__ = [
    "dirichlet",
    "iid",
    "label_histograms",
    "make_partition",
    "quantity_skew",
    "shards",
]


# --------------------------------------------------------------------------- checks


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; n_sites=True is always a mistake, so it is refused too.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise PartitionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise PartitionError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise PartitionError(f"{name} must be a finite number > 0, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise PartitionError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _check_labels(labels: object) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise PartitionError(f"labels must be a 1-D array, got shape {arr.shape}")
    return arr


def _check_sites_fit(n_examples: int, n_sites: int, method: str) -> None:
    if n_sites > n_examples:
        raise PartitionError(
            f"n_sites must be <= the number of examples for {method} "
            f"(every site gets at least one), got n_sites={n_sites} for {n_examples} examples"
        )


def _finish(parts: Sequence[np.ndarray]) -> Parts:
    """Sort each site's indices: the order inside a site carries no meaning, sorting makes
    partitions comparable with ``np.array_equal`` and with files written by other tools."""
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --------------------------------------------------------------------------- partitioners


def iid(n_examples: int, n_sites: int, seed: int) -> Parts:
    """Shuffle all examples and split them into ``n_sites`` parts whose sizes differ by at
    most one: the baseline every non-IID result is compared against."""
    n_examples = _check_int("n_examples", n_examples, 0)
    n_sites = _check_int("n_sites", n_sites, 1)
    seed = _check_int("seed", seed, 0)
    _check_sites_fit(n_examples, n_sites, "iid")
    rng = np.random.default_rng(seed)
    return _finish(np.array_split(rng.permutation(n_examples), n_sites))


def dirichlet(labels: np.ndarray, n_sites: int, alpha: float, seed: int) -> Parts:
    """Label skew: each class is divided among sites in proportions drawn from
    Dirichlet(alpha, ..., alpha). Small alpha gives each site few classes, large alpha
    approaches IID.

    The exact sequence of draws (per class in ascending order: shuffle that class's
    indices, draw the proportions, cut at ``floor(cumsum(p) * n_c)``) is the one Flower's
    benchmarks and many papers use; it is kept bit for bit so that a comparison with them
    runs on the very same federation. Sites can come out empty and are kept.
    """
    y = _check_labels(labels)
    n_sites = _check_int("n_sites", n_sites, 1)
    seed = _check_int("seed", seed, 0)
    alpha = _check_positive("alpha", alpha)
    rng = np.random.default_rng(seed)
    chunks: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
    for c in np.unique(y):
        idx = np.where(y == c)[0]
        rng.shuffle(idx)
        p = rng.dirichlet(alpha * np.ones(n_sites))
        cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
        for site, chunk in enumerate(np.split(idx, cuts)):
            chunks[site].append(chunk)
    return _finish([np.concatenate(c) if c else np.empty(0, np.int64) for c in chunks])


def _quantity_sizes(
    n_examples: int, n_sites: int, weights: np.ndarray, min_size: int
) -> np.ndarray:
    """Turn positive weights into integer sizes summing to ``n_examples``, each at least
    ``min_size``: the floor is given first, the rest is shared in proportion to the weights
    by largest remainder (ties broken by site order), so no rounding step can push a site
    under its floor or leave an example unassigned."""
    spare = n_examples - n_sites * min_size
    share = weights / weights.sum() * spare
    extra = np.floor(share).astype(np.int64)
    left = spare - int(extra.sum())
    order = np.argsort(-(share - extra), kind="stable")
    extra[order[:left]] += 1
    return extra + min_size


def quantity_skew(
    n_examples: int,
    n_sites: int,
    seed: int,
    distribution: Distribution = "lognormal",
    sigma: float = 1.0,
    exponent: float = 1.5,
    min_size: int = 1,
) -> Parts:
    """Quantity skew: labels stay IID but sites hold very different amounts of data, as
    hospitals or shops of different sizes do.

    Site weights are drawn from lognormal(0, ``sigma``) or from a Pareto (power-law) law with
    tail ``exponent`` (``rng.pareto(exponent) + 1``, i.e. x_min = 1), scaled to
    ``n_examples`` with every site holding at least ``min_size``; the examples are then dealt
    out at random.
    """
    n_examples = _check_int("n_examples", n_examples, 0)
    n_sites = _check_int("n_sites", n_sites, 1)
    seed = _check_int("seed", seed, 0)
    min_size = _check_int("min_size", min_size, 0)
    _check_sites_fit(n_examples, n_sites, "quantity skew")
    if n_sites * min_size > n_examples:
        raise PartitionError(
            f"min_size={min_size} is too large: n_sites * min_size = {n_sites * min_size} "
            f"exceeds the {n_examples} examples"
        )
    rng = np.random.default_rng(seed)
    if distribution == "lognormal":
        sigma = _check_positive("sigma", sigma)
        weights = rng.lognormal(mean=0.0, sigma=sigma, size=n_sites)
    elif distribution == "powerlaw":
        exponent = _check_positive("exponent", exponent)
        weights = rng.pareto(exponent, size=n_sites) + 1.0
    else:
        raise PartitionError(
            f"distribution must be 'lognormal' or 'powerlaw', got {distribution!r}"
        )
    if not (np.isfinite(weights.sum()) and weights.sum() > 0):
        # An extreme sigma or a tiny exponent overflows (or underflows) float64; refuse
        # rather than divide inf by inf and hand out NaN sizes.
        raise PartitionError(
            f"{distribution} weights overflowed float64: "
            f"sigma={sigma}, exponent={exponent} is too extreme"
        )
    sizes = _quantity_sizes(n_examples, n_sites, weights, min_size)
    return _finish(np.split(rng.permutation(n_examples), np.cumsum(sizes)[:-1]))


def shards(labels: np.ndarray, n_sites: int, classes_per_site: int, seed: int) -> Parts:
    """McMahan et al.'s "pathological non-IID" split: sort the examples by label, cut them
    into ``n_sites * classes_per_site`` equal shards and give each site ``classes_per_site``
    shards at random. A site then sees at most ``classes_per_site`` classes whenever the
    shards do not straddle a class boundary (exactly so on balanced data where the class
    size is a multiple of the shard size).

    Examples are shuffled before the (stable) sort so that which examples of a class land
    in which shard is random too, not fixed by the order of the data file.
    """
    y = _check_labels(labels)
    n_sites = _check_int("n_sites", n_sites, 1)
    seed = _check_int("seed", seed, 0)
    k = _check_int("classes_per_site", classes_per_site, 1)
    n_classes = len(np.unique(y))
    if k > n_classes:
        raise PartitionError(
            f"classes_per_site must be <= the number of classes ({n_classes}), got {k}"
        )
    n_shards = n_sites * k
    if n_shards > len(y):
        raise PartitionError(
            f"n_sites * classes_per_site = {n_shards} shards must be <= the number of "
            f"examples ({len(y)}), so that no shard is empty"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(by_label, n_shards)
    owner = rng.permutation(n_shards)
    return _finish(
        [np.concatenate([pieces[s] for s in owner[i * k : (i + 1) * k]]) for i in range(n_sites)]
    )


# --------------------------------------------------------------------------- summaries


def label_histograms(
    labels: np.ndarray, parts: Sequence[np.ndarray], n_classes: int | None = None
) -> np.ndarray:
    """Count each class at each site: shape (n_sites, n_classes), int64. Labels must be
    integers in [0, n_classes); ``n_classes`` defaults to ``max(labels) + 1`` so that a
    class no site holds still gets its (zero) column when the caller names it."""
    y = _check_labels(labels)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise PartitionError(f"labels must be integers for a histogram, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise PartitionError(f"labels must be >= 0 for a histogram, got {int(y.min())}")
    top = int(y.max()) + 1 if y.size else 0
    if n_classes is None:
        n_classes = top
    n_classes = _check_int("n_classes", n_classes, 0)
    if top > n_classes:
        raise PartitionError(f"n_classes={n_classes} but labels go up to {top - 1}")
    out = np.zeros((len(parts), n_classes), dtype=np.int64)
    for i, part in enumerate(parts):
        idx = np.asarray(part, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
            raise PartitionError(
                f"part {i} holds indices outside [0, {len(y)}): "
                f"min {int(idx.min())}, max {int(idx.max())}"
            )
        out[i] = np.bincount(y[idx], minlength=n_classes)
    return out


# --------------------------------------------------------------------------- dispatch

# method -> (function of (labels, n_sites, seed, params), allowed names, required names)
_Builder = Callable[[np.ndarray, int, int, dict[str, Any]], Parts]
_METHODS: dict[str, tuple[_Builder, frozenset[str], frozenset[str]]] = {
    "iid": (lambda y, n, s, p: iid(len(y), n, s), frozenset(), frozenset()),
    "dirichlet": (
        lambda y, n, s, p: dirichlet(y, n, seed=s, **p),
        frozenset({"alpha"}),
        frozenset({"alpha"}),
    ),
    "quantity": (
        lambda y, n, s, p: quantity_skew(len(y), n, s, **p),
        frozenset({"distribution", "sigma", "exponent", "min_size"}),
        frozenset(),
    ),
    "shards": (
        lambda y, n, s, p: shards(y, n, seed=s, **p),
        frozenset({"classes_per_site"}),
        frozenset({"classes_per_site"}),
    ),
}


def make_partition(
    method: str, labels: np.ndarray, n_sites: int, seed: int, **params: Any
) -> Parts:
    """Build a partition by name, as a job file or benchmark names it: ``method`` is one of
    "iid", "dirichlet", "quantity", "shards"; ``params`` are that method's own parameters.
    Unknown methods, missing or unexpected parameter names and bad values all raise
    :class:`PartitionError`, rather than a ``TypeError`` deep inside a simulation."""
    if method not in _METHODS:
        raise PartitionError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    build, allowed, required = _METHODS[method]
    unexpected = sorted(set(params) - allowed)
    if unexpected:
        expected = ", ".join(sorted(allowed)) if allowed else "none"
        raise PartitionError(
            f"unexpected parameter(s) {unexpected} for method {method!r}; expected: {expected}"
        )
    missing = sorted(required - set(params))
    if missing:
        raise PartitionError(f"method {method!r} needs parameter(s) {missing}")
    return build(_check_labels(labels), n_sites, seed, params)
