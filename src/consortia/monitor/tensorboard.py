"""TensorBoard scalars written with tensorboard's own event writer (no TensorFlow, no torch)."""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from consortia.server.rounds import LoopState, RoundRecord


class TensorBoardWriter:
    def __init__(self, logdir: str | Path) -> None:
        self._writer = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(
            value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        )
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def on_round(self, record: RoundRecord, state: LoopState) -> None:
        row = record.to_json()
        self.scalars(
            record.round,
            {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "round"},
        )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
