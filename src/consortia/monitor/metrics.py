"""Subscribers that record a run for people and tools: metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from consortia.core.events import RoundDone, RunFinished, RunStarted

AUDIT_SCALARS = ("norm_z", "cos_aggregate", "cos_previous", "median_distance_z")


class MetricsFile:
    """metrics.jsonl, one line per round, appended as each round becomes durable. On a
    resumed run the file is first rewritten from the history the run publishes (under DP
    already without participation). Rows are ``RoundRecord.public_json()``."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.history: list[dict[str, Any]] = []

    def __call__(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self.path = Path(event.run_dir) / "metrics.jsonl"
            self.history = list(event.history)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        elif isinstance(event, RoundDone) and self.path is not None:
            row = event.record.public_json()
            self.history.append(row)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


class AuditFile:
    """audit.jsonl: the audit's scores, one line per site and round (``[audit]`` jobs). On a
    resumed run the rows of rounds after the one resumed from are dropped first."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def __call__(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self.path = Path(event.run_dir) / "audit.jsonl"
            if self.path.exists():
                kept = [
                    line
                    for line in self.path.read_text().splitlines()
                    if line and json.loads(line).get("round", 0) <= event.start_round
                ]
                self.path.write_text("".join(line + "\n" for line in kept))
        elif isinstance(event, RoundDone) and self.path is not None and event.record.audit:
            with self.path.open("a") as f:
                for row in event.record.audit:
                    f.write(json.dumps(row) + "\n")


class TensorBoardWriter:
    """Scalars with tensorboard's own event writer (no TensorFlow, no torch)."""

    def __init__(self) -> None:
        self._writer: EventFileWriter | None = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        assert self._writer is not None
        summary = Summary(
            value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        )
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def __call__(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self._writer = EventFileWriter(str(Path(event.run_dir) / "tensorboard"))
        elif isinstance(event, RoundDone) and self._writer is not None:
            row = event.record.public_json()
            self.scalars(
                event.record.round,
                {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "round"},
            )
            audit = {
                f"audit/{name}/{site_row['site']}": site_row[name]
                for site_row in event.record.audit
                for name in AUDIT_SCALARS
                if isinstance(site_row.get(name), (int, float))
                and not event.record.participation_private
            }
            if audit:
                self.scalars(event.record.round, audit)
            self._writer.flush()
        elif isinstance(event, RunFinished) and self._writer is not None:
            self._writer.close()
            self._writer = None
