"""The digits task: scikit-learn's 8x8 handwritten digits and a small MLP.

Used by ``job.toml`` (simulation: the train split is divided among virtual sites).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from consortia import Dataset


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def load_data() -> Dataset:
    """Stratified 80/20 split (random_state=0); the scaler is fitted on the train split only."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    return Dataset(
        scaler.transform(x_tr).astype(np.float32),
        y_tr.astype(np.int64),
        scaler.transform(x_te).astype(np.float32),
        y_te.astype(np.int64),
    )
