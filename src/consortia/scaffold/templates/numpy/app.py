"""The task of {{name}}: a linear classifier written in NumPy, trained by gradient steps.

``make_model`` returns the parameters as named arrays; ``fit`` trains from them on one
site's data and returns the new parameters and metrics; ``evaluate`` scores parameters.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

import consortia


def make_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(30, np.float32), "b": np.zeros(1, np.float32)}


def _probability(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ params["w"] + params["b"][0])))


def fit(params, x, y, settings, rng):
    """``settings``: the job's [train] section; ``rng``: this site's seeded generator."""
    w, b = params["w"].copy(), params["b"].copy()
    for _ in range(settings.local_epochs):
        for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // settings.batch_size)):
            err = _probability({"w": w, "b": b}, x[batch]) - y[batch]
            w -= settings.lr * (x[batch].T @ err / len(batch)).astype(np.float32)
            b -= np.float32(settings.lr * err.mean())
    new = {"w": w, "b": b}
    return new, evaluate(new, x, y)


def evaluate(params, x, y):
    p = np.clip(_probability(params, x), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {"loss": loss, "accuracy": float(np.mean((p > 0.5) == y))}


def load_data() -> consortia.Dataset:
    """(x_train, y_train, x_test, y_test): simulation splits the training part among the
    virtual sites; the server evaluates each round's model on the test part."""
    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    return consortia.Dataset(
        x[:455], y[:455].astype(np.float32), x[455:], y[455:].astype(np.float32)
    )
