"""Checks every update must pass before it reaches the aggregator.

The message layer already refuses an update of the wrong size or dtype, or one holding
NaN or infinite values (``core/messages.py``, for every reply of every fleet). These
rules add what depends on the job: an L2 norm within an absolute bound, or within a
multiple of the round's median norm, and an example count (the weight a mean gives the
update) within the job's cap. A refused update is left out of the round and recorded
with its reason; the round goes on without it.

The absolute bound and the weight cap are decided one update at a time, so they keep the
mean's streaming. The relative bound needs the round's median norm, so the updates are
held until the round's replies are in: memory of one model per replying site.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UpdateRules:
    """What the job allows an update to be; ``None`` switches a rule off."""

    max_norm: float | None = None
    max_norm_multiple: float | None = None
    max_examples: int | None = None

    @property
    def holds_updates(self) -> bool:
        """The relative bound needs every norm of the round before it can decide."""
        return self.max_norm_multiple is not None


def update_norm(update: np.ndarray) -> float:
    return float(np.linalg.norm(update.astype(np.float64, copy=False)))


def refusal(norm: float, num_examples: int, rules: UpdateRules) -> str | None:
    """Why one update is refused on its own (absolute bound, weight cap), or None."""
    if rules.max_examples is not None and num_examples > rules.max_examples:
        return (
            f"claims {num_examples} examples, over the job's cap of {rules.max_examples} "
            "(strategy.validation.max_examples)"
        )
    if rules.max_norm is not None and norm > rules.max_norm:
        return (
            f"update norm {norm:.4g} is over the bound {rules.max_norm:.4g} "
            "(strategy.validation.max_norm)"
        )
    return None


def relative_refusals(norms: list[float], rules: UpdateRules) -> list[str | None]:
    """For each of the round's norms: why it is refused against the round's median, or None."""
    if rules.max_norm_multiple is None or not norms:
        return [None] * len(norms)
    median = float(np.median(norms))
    bound = rules.max_norm_multiple * median
    return [
        (
            f"update norm {n:.4g} is over {rules.max_norm_multiple:g} x the round's median "
            f"norm {median:.4g} (strategy.validation.max_norm_multiple)"
            if n > bound
            else None
        )
        for n in norms
    ]
