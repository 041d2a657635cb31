"""Receipts on their way to the sites: delivered in batches, outside the rounds' pace.

Why an outbox: delivering a round's receipts right after it commits is one more exchange
with every site of the round, and on short rounds that exchange was most of what the
ledger cost (8-10 ms of a 55 ms digits round on the 2-CPU development machine). A site
needs its receipt to hold the server to what it recorded, not to take part in the next
round, so receipts wait here and go out when what delivering them should cost (the last
delivery's cost per site, times the sites now waiting) is at most ``budget`` of the time
since the last delivery (on rounds of seconds, that is after every round), and always
before the job ends. A delivery is one exchange: each reachable site is sent every
receipt it is owed, oldest first, in ``receipts`` batches of up to 200 (a site keeps a
batch with one write and one fsync).

A receipt stays waiting while its site cannot be reached; one the site answered (kept,
or refused with a reason) is done. The store marks what was delivered, so a resumed job
sends what a crash kept from its sites (a site keeps a receipt it already holds once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from consortia.core.manifest import printable
from consortia.core.messages import Failure, InvalidMessageError, check_reply
from consortia.fleet.base import Fleet, Timing
from consortia.ledger.receipts import MAX_BATCH, ReceiptIns, ReceiptsIns

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.01  # receipts may take this share of the run's time


@dataclass
class ReceiptOutbox:
    budget: float = DEFAULT_BUDGET
    clock: Callable[[], float] = time.perf_counter
    waiting: dict[str, list[ReceiptIns]] = field(default_factory=dict)
    _per_site: float = 0.0  # what the last delivery cost, per site it went to
    _since: float | None = None  # when the last delivery ended (None: none yet)

    def add(self, receipts: Iterable[tuple[str, ReceiptIns]]) -> None:
        for site, receipt in receipts:
            self.waiting.setdefault(site, []).append(receipt)

    def __len__(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def due(self) -> bool:
        """Whether delivering now keeps receipts within their share of the time: what
        the last delivery cost per site, times the sites waiting now (a site's share is
        mostly fixed: one message, one file write and fsync, however many receipts)."""
        if not self.waiting:
            return False
        if self._since is None:
            return True
        expected = self._per_site * len(self.waiting)
        return expected <= self.budget * (self.clock() - self._since)

    def deliver(self, fleet: Fleet, timing: Timing) -> list[int]:
        """Send what is waiting to the sites that can be asked now; the ledger indexes of
        the receipts their sites answered (to be marked delivered)."""
        start = self.clock()
        done: list[int] = []
        answered: set[int] = set()  # id() of each receipt its site answered
        batches: list[tuple[str, list[ReceiptIns]]] = []
        try:
            reachable = set(fleet.sites())
            batches = [
                (site, queue[i : i + MAX_BATCH])
                for site, queue in sorted(self.waiting.items())
                if site in reachable
                for i in range(0, len(queue), MAX_BATCH)
            ]
            requests = [(site, ReceiptsIns.of(batch)) for site, batch in batches]
            missed: set[str] = set()
            outcomes = fleet.send(requests, timing)
            for (site, batch), request, out in zip(batches, requests, outcomes, strict=True):
                try:
                    if isinstance(out, Failure):
                        raise InvalidMessageError(out.reason)
                    reply = check_reply(out.message, request[1], site)
                except InvalidMessageError as exc:
                    if site not in missed:
                        why = printable(str(exc))[:200]
                        log.warning("receipts for site %s not delivered: %s", site, why)
                    missed.add(site)
                    continue
                if reply.refused:
                    reason = printable(reply.reason)[:200]
                    log.warning("site %s refused %d receipt(s): %s", site, reply.refused, reason)
                answered.update(id(r) for r in batch)
                done.extend(r.index for r in batch)
        except Exception as exc:  # receipts never stop a run
            log.warning("receipts not delivered: %s", exc)
        finally:
            self.waiting = {
                site: kept
                for site, queue in self.waiting.items()
                if (kept := [r for r in queue if id(r) not in answered])
            }
            self._since = self.clock()
            sent_to = len({site for site, _ in batches})
            self._per_site = (self._since - start) / max(sent_to, 1)
        return done

    def undelivered(self) -> Sequence[str]:
        """Sites still owed a receipt (said once the job is over)."""
        return sorted(self.waiting)
