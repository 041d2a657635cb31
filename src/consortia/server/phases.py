"""A phase: one message to each of some sites, replies until a deadline, a minimum to meet.

A round is a sequence of phases (fit; evaluate; secure aggregation adds its own), each
run by ``run_phase`` over whatever Fleet the job uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortia.core.errors import ConsortiaError, RoundFailedError
from consortia.fleet.base import Failure, Fleet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    name: str
    round: int
    requests: Sequence[tuple[str, Any]]
    deadline_s: float
    min_replies: int


@dataclass
class PhaseOutcome:
    accepted: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def run_phase(fleet: Fleet, phase: Phase, accept: Callable[[str, Any], None]) -> PhaseOutcome:
    """Send the phase's requests; hand each reply to ``accept`` in request order.

    ``accept`` validates and consumes a reply (e.g. streams it into the aggregate); if it
    raises a ConsortiaError the reply is refused and its site recorded as failed, so one
    bad site never stops the round. Raises RoundFailedError if too few replies survive.
    """
    outcome = PhaseOutcome()
    for result in fleet.send(phase.requests, phase.deadline_s):
        if isinstance(result, Failure):
            outcome.failures.append(result)
            log.warning(
                "round %d %s: site %s failed: %s",
                phase.round,
                phase.name,
                result.site,
                result.reason,
            )
            continue
        try:
            accept(result.site, result.message)
        except ConsortiaError as exc:
            outcome.failures.append(Failure(result.site, f"reply refused: {exc}"))
            log.warning(
                "round %d %s: refused reply of %s: %s", phase.round, phase.name, result.site, exc
            )
            continue
        outcome.accepted.append(result.site)
    if len(outcome.accepted) < phase.min_replies:
        reasons = "; ".join(f"{f.site}: {f.reason}" for f in outcome.failures[:5])
        raise RoundFailedError(
            f"round {phase.round} {phase.name}: {len(outcome.accepted)} replies, "
            f"at least {phase.min_replies} needed ({reasons})"
        )
    return outcome
