"""The task of {{name}}: logistic regression (scikit-learn) on the breast-cancer data set.

Replace ``load_data`` with your own examples and labels, and keep ``make_model``'s
``n_features`` and ``classes`` in step with them: the server must know the model's shape
before it sees any data.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

import consortia


def make_model() -> consortia.LinearModel:
    est = SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.01)
    return consortia.LinearModel(est, n_features=30, classes=np.array([0, 1]))


def load_data() -> consortia.Dataset:
    """(x_train, y_train, x_test, y_test): simulation splits the training part among the
    virtual sites; the server evaluates each round's model on the test part."""
    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    return consortia.Dataset(x[:455], y[:455], x[455:], y[455:])
