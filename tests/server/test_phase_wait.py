"""A phase can wait for more replies than it needs: the grace period starts later, the
round still succeeds with its minimum."""

from __future__ import annotations

import numpy as np

from consortia.core.messages import EvaluateIns, EvaluateRes
from consortia.fleet.debug import DebugFleet
from consortia.server.phases import Phase, run_phase


class _Site:
    def __init__(self, site_id: str) -> None:
        self.site_id = site_id

    def handle(self, message: EvaluateIns) -> EvaluateRes:
        if self.site_id.endswith("x"):
            raise RuntimeError("down")
        return EvaluateRes(self.site_id, message.round, 1, {})


def test_wait_for_moves_the_grace_period_not_the_minimum() -> None:
    sites = ["a", "b", "cx", "dx"]
    requests = [(s, EvaluateIns(1, np.zeros(2, np.float32))) for s in sites]
    phase = Phase("evaluate", 1, requests, 5.0, min_replies=2, grace_s=0.1, wait_for=4)
    assert phase.timing.min_replies == 4  # the grace period waits for all four
    record = run_phase(DebugFleet(sites, _Site), phase, lambda site, reply: None)
    assert record.accepted == ["a", "b"]  # two failed: still enough for the minimum
    assert Phase("e", 1, requests, 5.0, 3, 0.1).timing.min_replies == 3
