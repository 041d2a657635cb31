"""Update attacks: pure functions from what the attacker knows to what it sends.

``own`` is the update an attacker would send if it were honest; ``honest`` the honest
updates of the round, stacked as rows (known only to the omniscient attacks, as in their
papers). Each returns one vector.
"""

from __future__ import annotations

import math

import numpy as np


def sign_flip(own: np.ndarray) -> np.ndarray:
    """The opposite of the honest update (Allen-Zhu et al. 2021's sign flipping)."""
    return -np.asarray(own, np.float64)


def scaling(own: np.ndarray, factor: float) -> np.ndarray:
    """The update times ``factor``: with a poisoned update and factor n / eta, the model
    replacement of Bagdasaryan et al. 2020."""
    return factor * np.asarray(own, np.float64)


def gaussian(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noise instead of an update: every coordinate drawn from N(0, sigma^2)."""
    return rng.normal(0.0, sigma, size)


def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019's z_max: the largest shift that still leaves the attackers inside
    the majority a median-like rule keeps; s = floor(n / 2 + 1) - f supporters are needed,
    z = Phi^-1((n - s) / n)."""
    s = math.floor(n / 2 + 1) - f
    from scipy.stats import norm  # here: scipy.stats costs 0.3 s and 40 MB to import

    return float(norm.ppf((n - s) / n))


def a_little_is_enough(honest: np.ndarray, z: float) -> np.ndarray:
    """mean + z * std, per coordinate (std with ddof 1, as ByzFL), over the honest updates."""
    h = np.asarray(honest, np.float64)
    std = h.std(axis=0, ddof=1) if h.shape[0] > 1 else np.zeros(h.shape[1])
    return h.mean(axis=0) + z * std


def inner_product_manipulation(honest: np.ndarray, epsilon: float) -> np.ndarray:
    """Xie et al. 2019: -epsilon times the mean of the honest updates, so that the
    aggregate's inner product with the true gradient turns negative."""
    return -epsilon * np.asarray(honest, np.float64).mean(axis=0)


def mimic(honest: np.ndarray, index: int = 0) -> np.ndarray:
    """Karimireddy et al. 2022: copy one honest site's update, over-representing it (on
    non-IID data that biases the aggregate toward that site's data)."""
    return np.array(honest[index], np.float64)
