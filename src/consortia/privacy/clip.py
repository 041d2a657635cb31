"""L2 clipping of a flat update vector: the step that bounds one site's (or example's) influence.

Every DP guarantee here is stated for a sensitivity; clipping is what makes that sensitivity
true. It is a pure function so that clients, the server and tests share one definition.
"""

from __future__ import annotations

import math

import numpy as np

from consortia.core.errors import ConfigError


def l2_clip(vector: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``vector`` down so that its L2 norm is at most ``max_norm``.

    Returns ``(clipped, norm)`` where ``norm`` is the norm *before* clipping (adaptive
    clipping needs it to report whether the site was clipped). The input is not modified;
    a vector already within the bound is returned as an unchanged copy.
    """
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ConfigError(f"clip norm must be finite and > 0, got {max_norm!r}")
    v = np.asarray(vector)
    if v.ndim != 1:
        raise ConfigError(f"l2_clip expects a flat 1-D vector, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ConfigError("l2_clip: vector contains NaN or infinity")
    # float64 accumulation: a float32 norm can overflow or lose the bound by rounding.
    norm = float(np.linalg.norm(v.astype(np.float64, copy=False)))
    if norm <= max_norm:
        return v.copy(), norm
    clipped = (v.astype(np.float64) * (max_norm / norm)).astype(v.dtype)
    return clipped, norm
