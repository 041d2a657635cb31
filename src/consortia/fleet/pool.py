"""Process-pool fleet: simulated sites train in parallel worker processes.

Workers are forked once per run from the process that built the sites, so the data set,
partition and trainer are inherited (copy-on-write: no per-task pickling of data, and
little extra memory) and only the model vector and the reply cross the process boundary.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from consortia.client.runtime import Site
from consortia.fleet.base import Failure, Fleet, Outcome, Reply

# Set in the parent just before the fork; each worker inherits it.
_MAKE_SITE: Callable[[str], Site] | None = None


def _init_worker() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        # Two workers on two cores: intra-op threads would only oversubscribe.
        torch.set_num_threads(1)


def _handle(site_id: str, message: Any) -> tuple[bool, Any, float]:
    # Errors are returned as text: an exception object from user code may not pickle.
    start = time.monotonic()
    try:
        assert _MAKE_SITE is not None
        return True, _MAKE_SITE(site_id).handle(message), time.monotonic() - start
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}", time.monotonic() - start


def _handle_batch(batch: list[tuple[str, Any]]) -> list[tuple[bool, Any, float]]:
    return [_handle(site_id, message) for site_id, message in batch]


class PoolFleet(Fleet):
    def __init__(
        self, site_ids: Sequence[str], make_site: Callable[[str], Site], workers: int = 2
    ) -> None:
        global _MAKE_SITE
        self._ids = sorted(site_ids)
        _MAKE_SITE = make_site
        self._workers = max(1, workers)
        self._pool = mp.get_context("fork").Pool(self._workers, initializer=_init_worker)

    def sites(self) -> list[str]:
        return list(self._ids)

    def send(self, requests: Sequence[tuple[str, Any]], deadline_s: float) -> Iterator[Outcome]:
        """Sites go to the workers in small batches: a simulated site often trains in about
        a millisecond, less than one task's round trip between processes. Batches stay
        small (about four per worker a phase) so a slow site holds up few others; a site
        whose own time passes the deadline fails on its own."""
        deadline = time.monotonic() + deadline_s
        size = max(1, math.ceil(len(requests) / (4 * self._workers)))
        batches = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
        pending = [(b, self._pool.apply_async(_handle_batch, (b,))) for b in batches]
        for batch, result in pending:
            try:
                outcomes = result.get(timeout=max(0.0, deadline - time.monotonic()))
            except mp.TimeoutError:
                for site_id, _ in batch:
                    yield Failure(site_id, f"missed the {deadline_s:g} s deadline")
                continue
            except Exception as exc:  # e.g. a reply that could not be sent back
                for site_id, _ in batch:
                    yield Failure(site_id, f"{type(exc).__name__}: {exc}")
                continue
            for (site_id, _), (ok, value, elapsed) in zip(batch, outcomes, strict=True):
                if not ok:
                    yield Failure(site_id, value)
                elif elapsed > deadline_s:
                    yield Failure(site_id, f"missed the {deadline_s:g} s deadline")
                else:
                    yield Reply(site_id, value)

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
