"""What a deployment records of each round: who was asked what and how each answered
(RecordingFleet), and the round made durable before anything else sees it (DurableRounds)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortia.core.spec import ModelSpec, model_digest
from consortia.fleet.base import Failure, Fleet, Outcome
from consortia.monitor.run_folder import RunFolder
from consortia.server.rounds import LoopState, RoundRecord
from consortia.server.store import Participant, RoundRow, ServerStore, write_checkpoint


@dataclass
class _Batch:
    phase: str
    sites: list[str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class RecordingFleet(Fleet):
    """Passes everything through to the real fleet and notes who was asked what, and the
    transport's outcome, so the store can list each round's participants."""

    def __init__(self, inner: Fleet) -> None:
        self.inner = inner
        self.batches: list[_Batch] = []

    def sites(self) -> list[str]:
        return self.inner.sites()

    def send(self, requests: Sequence[tuple[str, Any]], deadline_s: float) -> Iterator[Outcome]:
        phase = type(requests[0][1]).__name__.removesuffix("Ins").lower() if requests else "?"
        batch = _Batch(phase, [s for s, _ in requests])
        self.batches.append(batch)
        for outcome in self.inner.send(requests, deadline_s):
            batch.outcomes[outcome.site] = outcome
            yield outcome

    def participants(self, record: RoundRecord | None) -> list[Participant]:
        """Each asked site's outcome. The loop reports failures as one list, phase after
        phase in request order; the first (fit) phase's share of it is known exactly from
        the record's reply count, so a site is never blamed for another phase's failure."""
        failures = list(record.failures) if record is not None else []
        out: list[Participant] = []
        for i, batch in enumerate(self.batches):
            if i == 0 and record is not None:
                n = len(batch.sites) - record.replies
                mine, failures = failures[:n], failures[n:]
            elif record is None:
                mine = [o for o in batch.outcomes.values() if isinstance(o, Failure)]
            else:
                asked = set(batch.sites)
                mine = [f for f in failures if f.site in asked]
                failures = [f for f in failures if f.site not in asked]
            failed = {f.site: f.reason for f in mine}
            for site in batch.sites:
                outcome = batch.outcomes.get(site)
                if outcome is None:
                    failed.setdefault(site, "no outcome (round aborted)")
                reason = failed.get(site)
                out.append(
                    Participant(site, batch.phase, "failed" if reason else "replied", reason)
                )
        return out

    def close(self) -> None:
        self.inner.close()


class DurableRounds:
    """Listener: checkpoint files first, then the round's row; runs before any other."""

    def __init__(
        self, folder: RunFolder, store: ServerStore, spec: ModelSpec, fleet: RecordingFleet
    ) -> None:
        self.folder, self.store, self.spec, self.fleet = folder, store, spec, fleet

    def on_round(self, record: RoundRecord, state: LoopState) -> None:
        rel = f"checkpoints/round_{state.round:04d}.safetensors"
        model_sha, opt_sha = write_checkpoint(
            self.folder.path / rel, self.spec, state.weights, state.optimizer_state
        )
        row = RoundRow(
            state.round,
            record.seconds,
            record.to_json(),
            rel,
            model_sha,
            opt_sha,
            model_digest(self.spec, state.weights),
        )
        self.store.commit_round(row, self.fleet.participants(record))
