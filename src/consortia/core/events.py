"""What a run reports as it goes: events, published on a bus that observers subscribe to.

The run driver publishes; the metrics file, TensorBoard, the progress bar, the console and
any user subscriber listen. Defined here, at the bottom of the package, so that every
layer can speak of a round without importing the layer that runs it. A subscriber that
raises is logged and skipped: observing a run must never stop it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.core.messages import Failure

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]


@dataclass
class LoopState:
    """Everything needed to continue a run: a checkpoint is this, written to disk."""

    round: int
    weights: np.ndarray
    optimizer_state: State = field(default_factory=dict)
    aggregator_state: State = field(default_factory=dict)


@dataclass
class PhaseRecord:
    """One phase of a round: who was asked, who answered usefully, who failed and why."""

    name: str
    asked: list[str]
    accepted: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass
class RoundRecord:
    round: int
    sites: int
    replies: int
    failures: list[Failure]
    seconds: float
    metrics: dict[str, float]
    worst_site: str | None = None
    phases: list[PhaseRecord] = field(default_factory=list)
    # Audit scores, one row per site (audit.jsonl); the metrics row lists the flagged only.
    audit: list[dict[str, Any]] = field(default_factory=list)
    # Under DP who took part, and how many, stay in the server's store (see public_json).
    participation_private: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "sites": self.sites,
            "replies": self.replies,
            "failures": len(self.failures),
            "seconds": round(self.seconds, 6),
            **self.metrics,
        }
        if self.failures:
            out["failed_sites"] = {f.site: f.reason for f in self.failures}
        if self.worst_site is not None:
            out["worst_site"] = self.worst_site
        flagged = [row["site"] for row in self.audit if row.get("flagged")]
        if flagged:
            out["flagged_sites"] = flagged
        return out

    def public_json(self) -> dict[str, Any]:
        """The row for published artefacts (metrics.jsonl, TensorBoard): under DP without
        the round's participants and their number, which amplification by sampling and the
        fixed denominator assume stay secret. The store keeps ``to_json()``."""
        row = self.to_json()
        return public_row(row) if self.participation_private else row


# Keys of a round's row that say who took part in it or how many did.
PARTICIPATION_KEYS = (
    "sites",
    "replies",
    # secure aggregation's per-round counts: privacy.json states them (they are not what
    # distributed DP's zero-out guarantee protects), metrics.jsonl under DP does not
    "secagg_masked_inputs",
    "secagg_dropouts_recovered",
    "failures",
    "failed_sites",
    "worst_site",
    "flagged_sites",
)


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A DP round's row without its participation (see ``RoundRecord.public_json``)."""
    return {k: v for k, v in row.items() if k not in PARTICIPATION_KEYS}


# ---- events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """``history`` holds the metrics rows of rounds completed before (a resumed run)."""

    job: str
    rounds: int
    start_round: int
    history: list[dict[str, Any]]
    run_dir: str


@dataclass(frozen=True)
class Notice:
    """Something the operator should read before the rounds start (e.g. empty sites)."""

    message: str


@dataclass(frozen=True)
class WaitingForSites:
    connected: list[str]
    needed: int


@dataclass(frozen=True)
class RoundStarted:
    round: int
    rounds: int
    connected: list[str]


@dataclass(frozen=True)
class PhaseDone:
    round: int
    phase: PhaseRecord


@dataclass(frozen=True)
class RoundDone:
    """Published once the round is durable (its checkpoint and record are on disk)."""

    record: RoundRecord
    state: LoopState
    rounds: int


@dataclass(frozen=True)
class RoundFailed:
    round: int
    error: str
    attempt: int
    retrying: bool


@dataclass(frozen=True)
class RunFinished:
    summary: dict[str, Any]


Event = (
    RunStarted
    | Notice
    | WaitingForSites
    | RoundStarted
    | PhaseDone
    | RoundDone
    | RoundFailed
    | RunFinished
)
Subscriber = Callable[[Any], None]


class EventBus:
    """Delivers each event to every subscriber in the order they subscribed."""

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self._subscribers: list[Subscriber] = list(subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Any) -> None:
        for sub in list(self._subscribers):
            try:
                sub(event)
            except Exception:
                log.exception(
                    "event subscriber %s failed on %s; the run goes on",
                    getattr(sub, "__qualname__", type(sub).__name__),
                    type(event).__name__,
                )
