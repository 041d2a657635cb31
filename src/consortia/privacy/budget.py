"""The budget guard: stop before a release would take epsilon past a limit.

One guard, one definition of epsilon (``epsilon_of``: epsilon at the guard's delta, from
the accountant the guard names; ``best`` is the smaller of RDP and PLD where both apply, and
an event no accountant can express counts as unbounded). Three users, each with the
accountant it has always used, so that no figure moves: the server checks the job's
``privacy.epsilon_limit`` before each round with the job's ``privacy.accountant``; a site
checks its policy's ``max_epsilon`` with RDP (a few milliseconds, every round, on the
site's own projection of the round's declared parameters); analytics checks its
record-level ``epsilon_limit`` with ``best``. All refuse *before* spending.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent

EpsilonKind = Literal["rdp", "pld", "best"]


def epsilon_of(
    accountant: PrivacyAccountant,
    delta: float,
    kind: EpsilonKind,
    extra: Iterable[PrivacyEvent] = (),
) -> float:
    """Epsilon at ``delta`` of ``accountant``'s events plus ``extra`` (inf: unbounded)."""
    if kind == "best":
        value = accountant.epsilon(delta, extra)["best"]
    else:
        value = accountant.epsilon_by(kind, delta, extra)
    return math.inf if value is None else value


@dataclass(frozen=True)
class BudgetDecision:
    """Whether the next release may go ahead, and the numbers behind the answer."""

    allowed: bool
    who: str  # "job", a site, or "analytics"
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


@dataclass(frozen=True)
class BudgetGuard:
    """A limit on epsilon at ``delta``, by the ``accountant`` named (see the module)."""

    limit: float
    delta: float
    accountant: EpsilonKind = "best"
    who: str = "job"

    def __post_init__(self) -> None:
        if not (self.limit > 0 and not math.isnan(self.limit)):
            raise ConfigError(f"epsilon limit for {self.who} must be > 0, got {self.limit!r}")

    def epsilon(self, accountant: PrivacyAccountant, extra: Iterable[PrivacyEvent] = ()) -> float:
        return epsilon_of(accountant, self.delta, self.accountant, extra)

    def decide(self, spent: float, projected: float) -> BudgetDecision:
        """The decision for figures computed elsewhere (analytics' worst record)."""
        return BudgetDecision(
            projected <= self.limit, self.who, spent, projected, self.limit, self.delta
        )

    def check(
        self, accountant: PrivacyAccountant, next_events: Iterable[PrivacyEvent]
    ) -> BudgetDecision:
        """Would adding ``next_events`` keep epsilon at or below the limit?"""
        events = list(next_events)
        return self.decide(self.epsilon(accountant), self.epsilon(accountant, events))


def check_budget(
    accountant: PrivacyAccountant,
    next_events: Iterable[PrivacyEvent],
    *,
    limit: float,
    delta: float,
    who: str = "job",
    kind: EpsilonKind = "best",
) -> BudgetDecision:
    """Would adding ``next_events`` keep epsilon (``kind``, best by default) at or below
    ``limit``?"""
    return BudgetGuard(limit, delta, kind, who).check(accountant, next_events)
