"""A fleet without the sites that refused to join: their policy said no to the job, so
no round may ask them (asking would only collect the same refusal every round)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from consortia.core.join import JoinStatement
from consortia.fleet.base import Fleet, Outcome, Timing


class AdmittedFleet(Fleet):
    def __init__(self, inner: Fleet, refused: Mapping[str, str]) -> None:
        self.inner = inner
        self.refused = dict(refused)

    def sites(self) -> list[str]:
        return [s for s in self.inner.sites() if s not in self.refused]

    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Outcome]:
        return self.inner.send(requests, timing)

    def share(self, weights: np.ndarray) -> np.ndarray:
        return self.inner.share(weights)

    def worker_peaks(self) -> list[int]:
        return self.inner.worker_peaks()

    def join_statement(self, site: str) -> JoinStatement | None:
        return self.inner.join_statement(site)

    def join_refusals(self) -> dict[str, str]:
        return {**self.refused, **self.inner.join_refusals()}

    def end_job(self, status: str) -> None:
        self.inner.end_job(status)

    def close(self) -> None:
        self.inner.close()
