"""A phase: one message to each of some sites, replies until the phase ends, a minimum to meet.

A round is a sequence of phases (fit; evaluate; secure aggregation adds its own), each
run by ``run_phase`` over whatever Fleet the job uses. Every reply is checked (its class,
sender, round and its kind's own rules) before ``accept`` sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consortia.core.errors import ConsortiaError, RoundFailedError
from consortia.core.events import PhaseRecord
from consortia.core.messages import Failure, check_reply
from consortia.fleet.base import Fleet, Timing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    name: str
    round: int
    requests: Sequence[tuple[str, Any]]
    deadline_s: float
    min_replies: int
    grace_s: float | None = None
    # Replies to wait for before the grace period may start (at least ``min_replies``):
    # a protocol that tolerates losing only some sites (secure aggregation) waits for the
    # rest, yet still succeeds with ``min_replies`` when the deadline comes.
    wait_for: int = 0

    @property
    def timing(self) -> Timing:
        return Timing(self.deadline_s, max(self.min_replies, self.wait_for), self.grace_s)


def run_phase(
    fleet: Fleet,
    phase: Phase,
    accept: Callable[[str, Any], None],
    record: PhaseRecord | None = None,
) -> PhaseRecord:
    """Send the phase's requests; hand each checked reply to ``accept`` in request order.

    ``accept`` consumes a reply (e.g. streams it into the aggregate); if it raises a
    ConsortiaError the reply is refused and its site recorded as failed, so one bad site
    never stops the round. Raises RoundFailedError if too few replies survive; the
    ``record`` (filled as the phase goes) then still says who answered and who failed.
    """
    out = record or PhaseRecord(phase.name, [s for s, _ in phase.requests])
    requests = dict(phase.requests)
    for result in fleet.send(phase.requests, phase.timing):
        _consume(phase, result, requests, accept, out)
        # Let go of the reply before waiting for the next: a large update is freed as soon
        # as it has been aggregated, so memory never holds two of them.
        del result
    if len(out.accepted) < phase.min_replies:
        reasons = "; ".join(f"{f.site}: {f.reason}" for f in out.failures[:5])
        raise RoundFailedError(
            f"round {phase.round} {phase.name}: {len(out.accepted)} replies, "
            f"at least {phase.min_replies} needed ({reasons})"
        )
    return out


def _consume(
    phase: Phase,
    result: Any,
    requests: dict[str, Any],
    accept: Callable[[str, Any], None],
    out: PhaseRecord,
) -> None:
    if isinstance(result, Failure):
        out.failures.append(result)
        log.warning(
            "round %d %s: site %s failed: %s", phase.round, phase.name, result.site, result.reason
        )
        return
    try:
        message = check_reply(result.message, requests[result.site], result.site)
        accept(result.site, message)
    except ConsortiaError as exc:
        out.failures.append(Failure(result.site, f"reply refused: {exc}"))
        log.warning(
            "round %d %s: refused reply of %s: %s", phase.round, phase.name, result.site, exc
        )
        return
    out.accepted.append(result.site)
