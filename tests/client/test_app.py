"""Site apps: one handler per kind, middleware in order around every handler."""

from __future__ import annotations

import numpy as np
import pytest

from consortia.client.app import SiteApp
from consortia.core.messages import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    InvalidMessageError,
    TrainSettings,
)


class Echo(SiteApp):
    def on_evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        return EvaluateRes(self.site_id, ins.round, 1, {"calls": 1.0})


def test_middleware_wraps_handlers_first_outermost() -> None:
    trace: list[str] = []

    def outer(app, message, call_next):
        trace.append("outer in")
        reply = call_next(message)
        trace.append("outer out")
        return reply

    def inner(app, message, call_next):
        trace.append(f"inner in {app.site_id}")
        reply = call_next(message)
        return EvaluateRes(reply.site, reply.round, reply.num_examples, {"calls": 2.0})

    app = Echo("s", [outer, inner])
    reply = app.handle(EvaluateIns(3, np.zeros(1)))
    assert trace == ["outer in", "inner in s", "outer out"]
    assert reply.metrics == {"calls": 2.0} and reply.round == 3


def test_a_kind_without_a_handler_is_refused_by_name() -> None:
    with pytest.raises(InvalidMessageError, match="site s has no handler for 'fit' messages"):
        Echo("s").handle(FitIns(1, np.zeros(1), TrainSettings(), 0))
