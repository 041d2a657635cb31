"""Debug fleet: sites run one by one in the calling process, so a debugger or a print in
site code works, and every protocol step can be followed."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from consortia.fleet.base import Failure, Fleet, MakeSite, Outcome, Reply, SiteHandler, Timing


class DebugFleet(Fleet):
    """Each site app is made on first use and kept for the whole job."""

    def __init__(self, site_ids: Sequence[str], make_site: MakeSite) -> None:
        self._ids = sorted(site_ids)
        self._make_site = make_site
        self._apps: dict[str, SiteHandler] = {}

    def sites(self) -> list[str]:
        return list(self._ids)

    def app(self, site_id: str) -> SiteHandler:
        app = self._apps.get(site_id)
        if app is None:
            app = self._apps[site_id] = self._make_site(site_id)
        return app

    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Outcome]:
        # Sites run sequentially here, so each one's deadline counts its own time only;
        # otherwise the last sites of a phase would fail merely for being last. For the
        # same reason the grace period does not apply: nothing runs in parallel to wait for.
        for site_id, message in requests:
            # No local of this generator holds the reply while it is suspended: a large
            # update is freed as soon as the round has aggregated it.
            yield self._one(site_id, message, timing)

    def _one(self, site_id: str, message: Any, timing: Timing) -> Outcome:
        start = time.monotonic()
        try:
            reply = self.app(site_id).handle(message)
        except Exception as exc:  # a site's own code may raise anything
            return Failure(site_id, f"{type(exc).__name__}: {exc}")
        if time.monotonic() - start > timing.deadline_s:
            return Failure(site_id, f"missed the {timing.deadline_s:g} s deadline")
        return Reply(site_id, reply)
