"""Which neighbouring relation each guarantee holds for, in the words privacy.json uses.

An epsilon means nothing without the pair of datasets it compares. The accountants take
the relation their mechanism's analysis assumes; these statements say it per guarantee, in
one place, so that reports and docs cannot drift apart (torch-free: the local-DP module
imports torch, its statement is here).
"""

from __future__ import annotations

# DP-FedAvg: a Poisson-subsampled Gaussian per round (McMahan et al. 2018).
CENTRAL = (
    "add/remove one site: its whole contribution is present or absent (Poisson sampling of "
    "sites with secret randomness, fixed denominator q*N)"
)
# Kairouz, Liu and Steinke 2021, Theorem 1 bounds the sum's privacy loss when one site's
# integer vector is replaced by zero, every site's noise share still in the sum.
DISTRIBUTED = (
    "zero-out: one site's contribution replaced by zero, every site still adding its noise "
    "share (Kairouz, Liu and Steinke 2021, Theorem 1); rounds accounted without sampling"
)
# DP-SGD (Abadi et al. 2016): Poisson-subsampled Gaussian steps.
LOCAL_DP_SGD = (
    "add/remove one example of one site's training data (Poisson batches with secret randomness)"
)
# Federated analytics: one record's contribution to a bounded sum.
RECORD = "add/remove one record anywhere in the federation"
