"""Debug fleet: sites run one by one in the calling process, so a debugger or a print in
site code works, and every protocol step can be followed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from consortia.client.runtime import Site
from consortia.fleet.base import Failure, Fleet, Outcome, Reply


class DebugFleet(Fleet):
    def __init__(self, site_ids: Sequence[str], make_site: Callable[[str], Site]) -> None:
        self._ids = sorted(site_ids)
        self._make_site = make_site

    def sites(self) -> list[str]:
        return list(self._ids)

    def send(self, requests: Sequence[tuple[str, Any]], deadline_s: float) -> Iterator[Outcome]:
        # Sites run sequentially here, so each one's deadline counts its own time only;
        # otherwise the last sites of a phase would fail merely for being last.
        for site_id, message in requests:
            start = time.monotonic()
            try:
                reply = self._make_site(site_id).handle(message)
            except Exception as exc:  # a site's own code may raise anything
                yield Failure(site_id, f"{type(exc).__name__}: {exc}")
                continue
            if time.monotonic() - start > deadline_s:
                yield Failure(site_id, f"missed the {deadline_s:g} s deadline")
            else:
                yield Reply(site_id, reply)
