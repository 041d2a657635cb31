"""The event bus: every subscriber hears every event in order; one that raises is logged
and skipped, and the others (and the run) go on."""

import logging

import pytest

from consortia.core.events import EventBus, RunStarted


def test_a_failing_subscriber_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[str] = []

    def broken(event: object) -> None:
        raise RuntimeError("dashboard down")

    bus = EventBus([lambda e: heard.append("first"), broken])
    bus.subscribe(lambda e: heard.append("last"))
    with caplog.at_level(logging.ERROR):
        bus.publish(RunStarted("job", 3, 0, [], "/tmp/run"))
        bus.publish(RunStarted("job", 3, 1, [], "/tmp/run"))
    assert heard == ["first", "last", "first", "last"]
    assert caplog.text.count("failed on RunStarted; the run goes on") == 2
    assert "dashboard down" in caplog.text
