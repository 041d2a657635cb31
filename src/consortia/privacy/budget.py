"""Budget guards: stop before a release would take epsilon past a limit.

Two independent guards, one decision type. The server checks the job's limit before each
round (and records the stop); each site checks its own policy before taking part, using
its own accountant, whatever the server says. Both ask the same question: "if the next event
were added, what would epsilon be?", and both refuse *before* spending.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from consortia.core.errors import ConfigError, ConsortiaError
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent


class PrivacyBudgetExceeded(ConsortiaError):
    """A release was refused because it would take epsilon past a limit."""

    def __init__(self, decision: BudgetDecision) -> None:
        super().__init__(decision.message)
        self.decision = decision


@dataclass(frozen=True)
class BudgetDecision:
    """Whether the next release may go ahead, and the numbers behind the answer."""

    allowed: bool
    who: str  # "job" or the site's id
    spent_epsilon: float
    projected_epsilon: float
    limit: float
    delta: float

    @property
    def message(self) -> str:
        verb = "allows" if self.allowed else "refuses"
        return (
            f"{self.who} {verb} the next round: epsilon would be "
            f"{self.projected_epsilon:.4g} (limit {self.limit:.4g}, delta {self.delta:g}; "
            f"spent so far {self.spent_epsilon:.4g})"
        )


def _best(acc: PrivacyAccountant, delta: float, extra: Iterable[PrivacyEvent] = ()) -> float:
    value = acc.epsilon(delta, extra)["best"]
    return math.inf if value is None else value


def check_budget(
    accountant: PrivacyAccountant,
    next_events: Iterable[PrivacyEvent],
    *,
    limit: float,
    delta: float,
    who: str = "job",
) -> BudgetDecision:
    """Would adding ``next_events`` keep epsilon (best accountant) at or below ``limit``?"""
    if not (limit > 0 and not math.isnan(limit)):
        raise ConfigError(f"epsilon limit for {who} must be > 0, got {limit!r}")
    events = list(next_events)
    spent = _best(accountant, delta)
    projected = _best(accountant, delta, events)
    return BudgetDecision(projected <= limit, who, spent, projected, limit, delta)


@dataclass(frozen=True)
class SitePrivacyPolicy:
    """A site's own rule: never let its epsilon (at ``delta``) go past ``max_epsilon``."""

    site_id: str
    max_epsilon: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (self.max_epsilon > 0 and not math.isnan(self.max_epsilon)):
            raise ConfigError(
                f"site {self.site_id!r}: max_epsilon must be > 0, got {self.max_epsilon!r}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"site {self.site_id!r}: delta must be in (0, 1), got {self.delta}")

    def check(
        self, accountant: PrivacyAccountant, next_events: Iterable[PrivacyEvent]
    ) -> BudgetDecision:
        """Decide on the next round with the site's own record of what it has spent."""
        return check_budget(
            accountant,
            next_events,
            limit=self.max_epsilon,
            delta=self.delta,
            who=f"site {self.site_id!r}",
        )

    def enforce(
        self, accountant: PrivacyAccountant, next_events: Iterable[PrivacyEvent]
    ) -> BudgetDecision:
        """Like :meth:`check` but raise :class:`PrivacyBudgetExceeded` on refusal."""
        decision = self.check(accountant, next_events)
        if not decision.allowed:
            raise PrivacyBudgetExceeded(decision)
        return decision
