"""The digits example's task, plus the server's root data set FLTrust needs (bench only).

FLTrust (Cao et al. 2021) assumes the server holds a small clean data set of its own: here
10 records of each class, taken from the train split (which the sites share out), so the
root set follows the sites' overall distribution, as in the paper.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "digits"))

from app import load_data, make_model

__all__ = ["load_data", "make_model", "root_data"]


def root_data() -> tuple[np.ndarray, np.ndarray]:
    data = load_data()
    y = np.asarray(data.y_train)
    idx = np.concatenate([np.flatnonzero(y == c)[:10] for c in np.unique(y)])
    return np.asarray(data.x_train)[idx], y[idx]
