"""Process-pool fleet: simulated sites run in parallel worker processes, each site pinned
to one worker for the whole job so that its app object, and any state it keeps, lives
there across phases and rounds.

Workers are forked once per run from the process that built the sites, so the data set,
partition and trainer are inherited (copy-on-write: no per-task pickling of data, and
little extra memory) and only messages cross the process boundary, between processes of
this run on this machine. Large arrays in messages (the global model, the updates) do not
cross the pipes: they go through files both sides map (``bulk.py``), written once each.

A site is pinned on first use to the worker with the least work in that phase, which
balances the first rounds and keeps every later message to that site on the same worker.
Each worker has a sender thread, so a worker stuck in a slow site never blocks the
parent: the phase still ends on time, and the stale reply is dropped later.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import pickle
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from consortia.core.memory import peak_rss_bytes
from consortia.fleet import bulk
from consortia.fleet.base import (
    Failure,
    Fleet,
    MakeSite,
    Outcome,
    Reply,
    SiteHandler,
    Timing,
    grace_failure,
)

log = logging.getLogger(__name__)

# (phase tag, position in the phase, ok, reply or error text, seconds the site took)
_Result = tuple[int, int, bool, Any, float]


def _init_worker() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        # Two workers on two cores: intra-op threads would only oversubscribe.
        torch.set_num_threads(1)


def _serve(
    conn: Connection,
    make_site: MakeSite,
    directory: Path,
    slots: bulk.ReplySlots,
    parent_end: Connection,
) -> None:
    """A worker's life: handle batches of (position, site, message) with the site's one app.

    The fork gave this process a copy of the server's end of its own pipe; closed here, the
    server's death (even by SIGKILL, with no cleanup) closes the pipe's last writer, so that
    ``recv_bytes`` ends with EOF and the worker exits instead of waiting forever."""
    parent_end.close()
    _init_worker()
    apps: dict[str, SiteHandler] = {}
    writer = bulk.ReplyWriter(directory, slots)
    reader = bulk.Reader()
    while True:
        try:
            item = reader.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if item is None:
            return
        tag, batch = item
        while batch:
            seq, site_id, message = batch.pop(0)  # popped: a message's model is let go early
            start = time.monotonic()
            try:
                app = apps.get(site_id)
                if app is None:
                    app = apps[site_id] = make_site(site_id)
                out: _Result = (tag, seq, True, app.handle(message), 0.0)
            except Exception as exc:  # text only: an exception from user code may not pickle
                out = (tag, seq, False, f"{type(exc).__name__}: {exc}", 0.0)
            del message
            out = (*out[:4], time.monotonic() - start)
            try:
                data = bulk.dumps(out, writer.put)
            except Exception as exc:  # e.g. a reply that cannot be pickled
                data = bulk.dumps(
                    (tag, seq, False, f"reply could not be sent back: {exc}", out[4]), writer.put
                )
            del out
            conn.send_bytes(data)


_STOP = pickle.dumps(None)  # what tells a worker to exit


class _Worker:
    def __init__(
        self, index: int, make_site: MakeSite, directory: Path, slots: bulk.ReplySlots
    ) -> None:
        self.index = index
        self.slots = slots
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve,
            args=(child, make_site, directory, slots, self.conn),
            name=f"consortia-site-worker-{index}",
        )
        self.process.daemon = True
        self.process.start()
        child.close()
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._sender = threading.Thread(target=self._send_loop, daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            try:
                self.conn.send_bytes(item)  # a pickled None tells the worker to exit
            except (OSError, ValueError):
                return  # the worker died; the reader notices and fails its sites
            if item is _STOP:
                return

    def submit(self, data: bytes) -> None:
        """Queue a pickled ``(tag, batch)`` for the worker."""
        self._outbox.put(data)

    def stop(self) -> None:
        self._outbox.put(_STOP)
        self._sender.join(timeout=2)
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.conn.close()


class PoolFleet(Fleet):
    def __init__(self, site_ids: Sequence[str], make_site: MakeSite, workers: int = 2) -> None:
        self._ids = sorted(site_ids)
        self._make_site = make_site
        self._dir = Path(tempfile.mkdtemp(prefix="consortia-pool-"))
        self._slots: dict[str, bulk.ReplySlots] = {}
        self._generations = itertools.count()
        self._reader = bulk.Reader(self._slots)
        self._workers = [self._start_worker(i) for i in range(max(1, workers))]
        self._home: dict[str, int] = {}
        self._tags = itertools.count(1)
        self._phase: bulk.Broadcast | None = None  # the large arrays of the phase running
        self._models: list[bulk.SharedModel] = []  # files reused once nothing maps them

    def sites(self) -> list[str]:
        return list(self._ids)

    def _start_worker(self, index: int) -> _Worker:
        slots = bulk.ReplySlots(self._dir, f"{index}-{next(self._generations)}")
        self._slots[slots.name] = slots  # made before the fork: the worker shares its flags
        return _Worker(index, self._make_site, self._dir, slots)

    def share(self, weights: np.ndarray) -> np.ndarray:
        if self._models and self._models[-1].holds(weights):
            return weights
        if weights.nbytes < bulk.THRESHOLD or not weights.flags.c_contiguous:
            return weights
        free = next((m for m in self._models if not m.in_use), None)
        path = free.path if free else self._dir / f"model-{len(self._models)}.bin"
        model, array = bulk.SharedModel.write(path, weights)
        self._models = [m for m in self._models if m is not free] + [model]
        return array

    def worker_peaks(self) -> list[int]:
        peaks = (peak_rss_bytes(w.process.pid) for w in self._workers if w.process.is_alive())
        return [p for p in peaks if p is not None]

    def _assign(self, requests: Sequence[tuple[str, Any]]) -> dict[int, list[tuple[int, str, Any]]]:
        batches: dict[int, list[tuple[int, str, Any]]] = {w.index: [] for w in self._workers}
        for seq, (site_id, message) in enumerate(requests):
            home = self._home.get(site_id)
            if home is None:
                home = min(batches, key=lambda w: (len(batches[w]), w))
                self._home[site_id] = home
            batches[home].append((seq, site_id, message))
        return batches

    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Outcome]:
        tag = next(self._tags)
        start = time.monotonic()
        batches = self._assign(requests)
        if self._phase is not None:
            self._phase.close()
        self._phase = bulk.Broadcast(self._dir, tag, self._models[-1] if self._models else None)
        for w in self._workers:
            if batches[w.index]:
                w.submit(self._phase.dumps((tag, batches[w.index])))
        return self._collect(tag, requests, batches, start, timing)

    def _collect(
        self,
        tag: int,
        requests: Sequence[tuple[str, Any]],
        batches: dict[int, list[tuple[int, str, Any]]],
        start: float,
        timing: Timing,
    ) -> Iterator[Outcome]:
        """Outcomes in request order. A reply that arrives before its turn waits as a
        mapping of its worker's file (no memory until read), so nothing here grows with
        the number of sites. The phase's files go when it ends (workers still reading
        them keep their mappings)."""
        try:
            results: dict[int, Outcome] = {}
            owner = {seq: w for w, batch in batches.items() for seq, _, _ in batch}
            replies, met_at = 0, None
            for seq in range(len(requests)):
                while seq not in results:
                    now = time.monotonic()
                    left = start + timing.deadline_s - now
                    if timing.grace_s is not None and met_at is not None:
                        left = min(left, met_at + timing.grace_s - now)
                    if left <= 0:
                        over = timing.grace_over(replies, met_at, now)
                        for s in range(seq, len(requests)):
                            if s not in results:
                                site = requests[s][0]
                                results[s] = (
                                    grace_failure(site, timing)
                                    if over
                                    else Failure(
                                        site, f"missed the {timing.deadline_s:g} s deadline"
                                    )
                                )
                        break
                    for _, s, ok, value, elapsed in self._receive(tag, owner, batches, left):
                        owner.pop(s, None)
                        site = requests[s][0]
                        if not ok:
                            results[s] = Failure(site, value)
                        elif elapsed > timing.deadline_s:
                            results[s] = Failure(
                                site, f"missed the {timing.deadline_s:g} s deadline"
                            )
                        else:
                            results[s] = Reply(site, value)
                            replies += 1
                            if met_at is None and 0 < timing.min_replies <= replies:
                                met_at = time.monotonic()
                value = None  # no stray reference may keep the last reply's update alive
                yield results.pop(seq)
        finally:
            if self._phase is not None:
                self._phase.close()
                self._phase = None

    def _receive(
        self,
        tag: int,
        owner: dict[int, int],
        batches: dict[int, list[tuple[int, str, Any]]],
        timeout: float,
    ) -> list[_Result]:
        """Whatever results arrive within ``timeout``; a dead worker is handled at once."""
        conns = {w.conn: w for w in self._workers}
        out: list[_Result] = []
        for conn in wait(list(conns), timeout):
            w = conns[conn]  # type: ignore[index]
            try:
                result: _Result = self._reader.loads(w.conn.recv_bytes())
            except (EOFError, OSError):
                out.extend(self._worker_died(w, tag, owner, batches[w.index]))
                continue
            if result[0] == tag:
                out.append(result)
        return out

    def _worker_died(
        self,
        w: _Worker,
        tag: int,
        owner: dict[int, int],
        batch: list[tuple[int, str, Any]],
    ) -> list[_Result]:
        """The site that was running when its worker died (a native crash, ``os._exit``, a
        signal) fails, named with the cause; the worker is replaced and the other sites of
        its batch that had not answered run again there (their app state is lost: logged)."""
        w.process.join(timeout=1)
        code = w.process.exitcode
        cause = (
            f"killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        waiting = [(seq, site, msg) for seq, site, msg in batch if owner.get(seq) == w.index]
        lost = sorted(s for s, home in self._home.items() if home == w.index)
        w.stop()
        self._slots.pop(w.slots.name, None)
        replacement = self._workers[w.index] = self._start_worker(w.index)
        if not waiting:  # it died between phases: nothing of this phase was running there
            log.error("site worker %d died (%s) between phases", w.index, cause)
            return []
        (seq, site, _), rest = waiting[0], waiting[1:]
        log.error(
            "site %s ended its worker process (%s); the worker is replaced, and its %d "
            "sites lose their state: %s",
            site,
            cause,
            len(lost),
            ", ".join(lost[:10]),
        )
        if rest and self._phase is not None:
            replacement.submit(self._phase.dumps((tag, rest)))
        return [(tag, seq, False, f"the site's code ended its worker process ({cause})", 0.0)]

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for w in workers:
            w.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
