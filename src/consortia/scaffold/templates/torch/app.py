"""The task of {{name}}: a small PyTorch classifier on scikit-learn's handwritten digits.

Replace ``load_data`` with your own examples and labels (NumPy arrays: float32 features,
int64 labels from 0) and ``make_model`` with your network (one output per label).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import consortia


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every site and the server start from the same weights
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def load_data() -> consortia.Dataset:
    """(x_train, y_train, x_test, y_test): simulation splits the training part among the
    virtual sites; the server evaluates each round's model on the test part."""
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    return consortia.Dataset(x[:1400], y[:1400], x[1400:], y[1400:])
