"""Breast cancer diagnosis with a logistic-regression model shared by five sites."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from consortia import Dataset, LinearModel


def make_model() -> LinearModel:
    # SGDClassifier with log loss is logistic regression trained by partial_fit, which
    # copes with a site that happens to hold only one class.
    est = SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.01)
    return LinearModel(est, n_features=30, classes=np.array([0, 1]))


def load_data() -> Dataset:
    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    return Dataset(scaler.transform(x_tr), y_tr, scaler.transform(x_te), y_te)
