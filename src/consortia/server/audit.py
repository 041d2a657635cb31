"""Audit scores per site and round (``strategy/robust/audit.py``), computed on the updates
that passed validation and reached the aggregator, once the round's aggregate is known.

The scores go into the round's record (``RoundRecord.audit``): the run folder's
``audit.jsonl`` (one row per site and round) and TensorBoard get them from there, the
round's metrics row only the list of flagged sites. The run summary lists the sites
flagged in at least ``audit.site_share`` of their audited rounds, with those rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from consortia.core.messages import FitRes
from consortia.strategy.robust.audit import AuditThresholds, Sketcher, finite, reasons, scores


class Auditor:
    """Scores each round; keeps one sketch per site of its last update (see the module)."""

    def __init__(self, thresholds: AuditThresholds, size: int, seed: int = 0) -> None:
        self.thresholds = thresholds
        self.sketch = Sketcher(size, seed)
        self.previous: dict[str, np.ndarray] = {}
        self.last_aggregate: np.ndarray | None = None

    def tee(self, inner: Any) -> AuditTee:
        return AuditTee(inner)

    def audit(
        self, round_: int, updates: list[tuple[str, np.ndarray]], aggregate: np.ndarray
    ) -> list[dict[str, Any]]:
        if not updates:
            return []
        sites = [s for s, _ in updates]
        x = np.stack([u for _, u in updates])
        sketches = [self.sketch(u) for _, u in updates]
        previous = [self.previous.get(s) for s in sites]
        rows = scores(x, aggregate, previous, sketches, self.last_aggregate)
        self.last_aggregate = np.asarray(aggregate, np.float64)
        out = []
        for site, sketch, row in zip(sites, sketches, rows, strict=True):
            self.previous[site] = sketch
            flags = reasons(row, self.thresholds)
            out.append(
                {"round": round_, "site": site}
                | {k: finite(v) for k, v in row.items()}
                | {"flagged": bool(flags), "reasons": flags}
            )
        return out


class AuditTee:
    """Passes each update on to ``inner`` and keeps it for the round's audit."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.updates: list[tuple[str, np.ndarray]] = []
        self.examples: list[int] = []

    def add(self, res: FitRes) -> None:
        self.inner.add(res)
        self.updates.append((res.site, res.delta))
        self.examples.append(res.num_examples)

    def result(self) -> Any:
        return self.inner.result()


def flagged_sites(
    rounds: list[tuple[int, list[str]]], audited: dict[str, int], share: float
) -> dict[str, list[int]]:
    """Sites flagged in at least ``share`` of the rounds they were audited in, with the
    rounds. ``rounds``: (round, flagged sites) per completed round."""
    hits: dict[str, list[int]] = {}
    for number, sites in rounds:
        for site in sites:
            hits.setdefault(site, []).append(number)
    return {
        site: sorted(r)
        for site, r in sorted(hits.items())
        if len(r) >= share * max(audited.get(site, len(r)), 1)
    }
