"""Seed derivation: every random choice gets its own generator from (seed, purpose, ...).

Seeds are derived by hashing labels (not Python's ``hash``, which changes per process) so
a site's training seed is the same whichever process or machine runs it; that is what
makes debug and parallel runs produce the same model.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed from a root seed and labels such as ("fit", round, site)."""
    text = "/".join([str(int(seed)), *(str(x) for x in labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *labels: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *labels))
