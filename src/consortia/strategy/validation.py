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

Besides refusals, a site's weight (its claimed example count) is capped, never refused:
at ``max_examples_per_site`` if the job sets it, and by default at ``max_weight_multiple``
(10) times the median weight of the previous round's accepted updates. A site claiming
2^53 examples would otherwise be the whole mean. The previous round's median, not this
round's: this round's is known only once every update is in, and the streaming mean
cannot wait for it without holding a model per site. So the first round of a run (or of
a resumed run) is capped by ``max_examples_per_site`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_WEIGHT_MULTIPLE = 10.0


@dataclass(frozen=True)
class UpdateRules:
    """What the job allows an update to be; ``None`` switches a rule off."""

    max_norm: float | None = None
    max_norm_multiple: float | None = None
    max_examples: int | None = None
    max_examples_per_site: int | None = None
    max_weight_multiple: float | None = DEFAULT_WEIGHT_MULTIPLE

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


def weight_cap(rules: UpdateRules, reference: float | None) -> tuple[float, str] | None:
    """The largest weight an update may carry this round, and which rule sets it (None:
    no cap). ``reference`` is the previous round's median weight, when there was one."""
    caps: list[tuple[float, str]] = []
    if rules.max_examples_per_site is not None:
        caps.append(
            (float(rules.max_examples_per_site), "strategy.validation.max_examples_per_site")
        )
    if rules.max_weight_multiple is not None and reference is not None and reference > 0:
        caps.append(
            (
                rules.max_weight_multiple * reference,
                f"{rules.max_weight_multiple:g} x the previous round's median weight "
                f"{reference:g} (strategy.validation.max_weight_multiple)",
            )
        )
    return min(caps) if caps else None
