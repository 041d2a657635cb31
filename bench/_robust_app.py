"""The digits example's task, plus the server's root data set FLTrust needs (bench only).

FLTrust (Cao et al. 2021) assumes the server holds a small clean data set of its own: here
10 records of each class, taken from the train split (which the sites share out), so the
root set follows the sites' overall distribution, as in the paper.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

# The example's app.py, by path under a name of its own: a module merely named "app" that
# something else imported first must not stand in for it.
_PATH = Path(__file__).resolve().parent.parent / "examples" / "digits" / "app.py"
_spec = importlib.util.spec_from_file_location("consortia_bench_digits_app", _PATH)
assert _spec is not None and _spec.loader is not None
_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_digits)

make_model = _digits.make_model
load_data = _digits.load_data

__all__ = ["load_data", "make_model", "root_data"]


def root_data() -> tuple[np.ndarray, np.ndarray]:
    data = load_data()
    y = np.asarray(data.y_train)
    idx = np.concatenate([np.flatnonzero(y == c)[:10] for c in np.unique(y)])
    return np.asarray(data.x_train)[idx], y[idx]
