"""The ledger's cost: round time with and without it on the digits example, and how fast
``audit verify`` checks a 100,000-entry ledger. Prints its figures.

    python bench/ledger.py [--rounds 30] [--repeats 6] [--entries 100000] [--verify-reps 3]

Round time: the digits example (examples/digits: 100 sites, 10 per round, pool fleet) runs
``--repeats`` times with the ledger and as often without, in pairs whose order
alternates, in this one process; a round's time is from RoundStarted to RoundDone (fit,
aggregation, the commit with its ledger entries, any receipts delivered), the first round
of each run (worker start-up) left out. On a shared machine the A/B medians carry the
machine's noise, so the server's own ledger work is also timed directly where it runs
(site signature checks, entries, appends, receipts), charged to the round it ran in
(rounds 2..) or to the job (the first round, when every admitted site's site_joined entry
is written, and after the last, when the receipts still waiting are delivered), and the
sites' share (digest and signature of one update) measured on its own.

Verification: a synthetic ledger of the given size written by the real append path (one
job, 100 sites with Ed25519 keys, rounds of 100 signed updates, the worst case; then
rounds of 10, the digits example's shape), then ``verify_entries``
on it (what ``audit verify`` runs: one process per CPU), then in one process, each timed
``--verify-reps`` times.

Targets: under 2% round-time overhead; at least 20,000 entries verified per second.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DIGITS_JOB = REPO / "examples" / "digits" / "job.toml"


class _RoundClock:
    """RoundStarted -> RoundDone, per round; and which round is running now (None
    between rounds and before and after them), so that ledger work is charged to it."""

    def __init__(self, now: dict[str, int | None]) -> None:
        self.started: dict[int, float] = {}
        self.seconds: dict[int, float] = {}
        self.now = now

    def __call__(self, event: Any) -> None:
        from consortia.core.events import RoundDone, RoundStarted

        if isinstance(event, RoundStarted):
            self.started[event.round] = time.perf_counter()
            self.now["round"] = event.round
        elif isinstance(event, RoundDone):
            rnd = event.record.round
            self.seconds[rnd] = time.perf_counter() - self.started[rnd]
            self.now["round"] = None


Spent = dict[tuple[str, str], float]  # (when: "round" | "per job", what) -> seconds


def _instrument(spent: Spent, now: dict[str, int | None]) -> None:
    """Time the server's ledger work where it happens (same process as the run): in
    rounds 2.. (what the A/B compares), or once per job (the first round's site_joined
    entries for every admitted site, the job's first and last entries, the receipts
    still waiting when the job ends)."""
    from consortia.ledger import chain
    from consortia.server import provenance, run, store

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                rnd = now["round"]
                when = "round" if rnd is not None and rnd > 1 else "per job"
                spent[(when, label)] += time.perf_counter() - t0

        setattr(owner, name, wrapper)

    timed(provenance.Provenance, "check_update", "check site signatures")
    timed(provenance.Provenance, "aggregate", "entries")
    timed(provenance.Provenance, "round_items", "entries")
    timed(provenance.Provenance, "closed", "entries")
    timed(chain, "append", "sign and append")
    store.ledger_chain = chain  # the store calls chain.append through this name
    timed(run.Run, "_send_receipts", "receipts")


def round_overhead(rounds: int, repeats: int) -> None:
    from consortia.simulation import simulate

    spent: Spent = defaultdict(float)
    now: dict[str, int | None] = {"round": None}
    _instrument(spent, now)
    times: dict[bool, list[float]] = {True: [], False: []}
    ledger_rounds = jobs = 0
    ratios = []  # each pair of runs: median round with / without
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            medians = {}
            # ABBA: the order alternates, so that a drift of the machine favours neither.
            for ledger in (False, True) if rep % 2 == 0 else (True, False):
                clock = _RoundClock(now)
                out = Path(tmp) / f"r{rep}-{int(ledger)}"
                simulate(DIGITS_JOB, rounds=rounds, out=out, listeners=[clock], ledger=ledger)
                kept = [s for r, s in sorted(clock.seconds.items()) if r > 1]
                times[ledger] += kept
                medians[ledger] = statistics.median(kept)
                ledger_rounds += len(kept) if ledger else 0
                jobs += int(ledger)
            ratios.append(medians[True] / medians[False])
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"digits example, {rounds} rounds x {repeats} runs per mode, rounds 2.. kept")
    print(f"  round time, median: without ledger {off:.3f} s, with ledger {on:.3f} s")
    print(
        f"  A/B overhead: {100 * (on / off - 1):+.2f}% pooled, "
        f"{100 * (statistics.median(ratios) - 1):+.2f}% median of the {repeats} paired runs "
        f"({', '.join(f'{100 * (r - 1):+.0f}%' for r in ratios)}; machine noise included)"
    )
    site = _site_share()
    in_round = sum(v for (when, _), v in spent.items() if when == "round") / ledger_rounds
    per_round = in_round + site  # the sites sign in parallel: one site's share is on the path
    for (when, label), v in sorted(spent.items()):
        if when == "round":
            print(f"    server: {label:24s} {1000 * v / ledger_rounds:8.3f} ms per round")
    print(f"  site: digest + sign one update   {1000 * site:8.3f} ms (each site, in parallel)")
    print(
        f"  ledger work per round {1000 * per_round:.2f} ms = {100 * per_round / off:.2f}% "
        f"of the median round (target < 2%: {'met' if per_round / off < 0.02 else 'NOT met'})"
    )
    floor = _crypto_floor(sites=10, entries=13)
    print(
        f"  of which no ledger can skip: 10 update digests and site signatures checked, 13 "
        f"entries signed = {1000 * floor:.2f} ms = {100 * floor / off:.2f}% of the median round"
    )
    once = {label: v / jobs for (when, label), v in spent.items() if when == "per job"}
    print(
        f"  once per job: {1000 * sum(once.values()):.1f} ms ("
        + ", ".join(f"{label} {1000 * v:.1f}" for label, v in sorted(once.items()))
        + ")"
    )


def _crypto_floor(sites: int, entries: int, reps: int = 200) -> float:
    """What one digits round must spend on the ledger's cryptography alone (median of
    ``reps``): each site's update hashed and its signature verified, each entry signed."""
    import numpy as np

    from consortia.ledger.sign import (
        LedgerKey,
        SiteSigner,
        site_signature_ok,
        update_digest,
        update_message,
    )

    with tempfile.TemporaryDirectory() as tmp:
        key = LedgerKey.create(Path(tmp))
    signer = SiteSigner.generate()
    update = np.zeros(64 * 128 + 128 + 128 * 10 + 10, np.float32)
    message = update_message("job", 1, update_digest(update))
    signature = signer.sign(message)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(sites):
            site_signature_ok(
                signer.identity, signature, update_message("job", 1, update_digest(update))
            )
        for i in range(entries):
            key.sign(i.to_bytes(32, "big"))
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _site_share() -> float:
    import numpy as np

    from consortia.ledger.sign import SiteSigner, update_digest, update_message

    signer = SiteSigner.generate()
    update = np.random.default_rng(0).standard_normal(64 * 128 + 128 + 128 * 10 + 10)
    update = update.astype(np.float32)
    n = 200
    t0 = time.perf_counter()
    for r in range(n):
        signer.sign(update_message("job", r, update_digest(update)))
    return (time.perf_counter() - t0) / n


def synthetic_ledger(n: int, sites: int = 100, per_round: int = 100) -> list[Any]:
    """``n`` entries through the real append path: job, joins, rounds of ``per_round``
    signed updates (sites taking turns), each round opened and closed."""
    from consortia.ledger import kinds as K
    from consortia.ledger.chain import SCHEMA, append, read_entries
    from consortia.ledger.sign import LedgerKey, SiteSigner, update_message

    with tempfile.TemporaryDirectory() as tmp:
        key = LedgerKey.create(Path(tmp))
    db = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in SCHEMA:
        db.execute(stmt)
    signers = [SiteSigner.generate() for _ in range(sites)]
    names = [f"site-{i:04d}" for i in range(sites)]
    items: list[tuple[str, dict[str, Any]]] = [
        (K.JOB_CREATED, {"job_id": "bench", "ledger_public_key": key.public}),
        *[
            (K.SITE_JOINED, {"site": s, **g.identity.to_json(), "policy_sha256": None, "dua": None})
            for s, g in zip(names, signers, strict=True)
        ],
    ]
    rnd = 0
    while len(items) < n:
        rnd += 1
        items.append((K.ROUND_OPENED, {"round": rnd, "sites_asked": per_round}))
        turn = [(rnd * per_round + i) % sites for i in range(per_round)]
        for s, g in ((names[i], signers[i]) for i in turn):
            digest = os.urandom(32).hex()
            items.append(
                (
                    K.UPDATE_RECEIVED,
                    {
                        "round": rnd,
                        "site": s,
                        "update_sha256": digest,
                        "signature": g.sign(update_message("bench", rnd, digest)),
                        "bytes": 39760,
                        "examples": 17,
                        "validation": "accepted",
                        "audit_flags": [],
                    },
                )
            )
        items.append((K.ROUND_CLOSED, {"round": rnd, "model_digest": os.urandom(32).hex()}))
    db.execute("BEGIN")
    append(db, key.sign, items[:n])
    db.execute("COMMIT")
    return read_entries(db)


def verify_speed(n: int, reps: int, per_round: int) -> None:
    from consortia.ledger import verify

    t0 = time.perf_counter()
    entries = synthetic_ledger(n, per_round=per_round)
    built = time.perf_counter() - t0
    runs = [verify.verify_entries(entries) for _ in range(reps)]
    for report in runs:
        assert report.ok, report.problem
    serial = [verify.verify_entries(entries, workers=1).seconds for _ in range(reps)]
    report = runs[0]
    seconds = statistics.median(r.seconds for r in runs)
    rate = report.entries / seconds
    updates = report.kinds.get("update_received", 0)
    print(
        f"audit verify on {report.entries} entries, rounds of {per_round} updates "
        f"({updates} signed updates; built {built:.1f} s)"
    )
    print(
        f"  all checks, {os.cpu_count()} processes: median of {reps} {seconds:.2f} s "
        f"(runs {', '.join(f'{r.seconds:.2f}' for r in runs)}) = {rate:,.0f} entries/s "
        f"(target >= 20,000: {'met' if rate >= 20000 else 'NOT met'})"
    )
    one = statistics.median(serial)
    print(f"  the same checks in one process: {one:.2f} s = {report.entries / one:,.0f} entries/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--verify-reps", type=int, default=3)
    ap.add_argument(
        "--updates-per-round",
        type=int,
        nargs="+",
        default=[100, 10],
        help="ledger shapes: every one of 100 sites a round (98%% of entries signed "
        "updates), and 10 a round as in the digits example (83%%)",
    )
    ap.add_argument("--skip-rounds", action="store_true", help="only the verification figure")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_rounds:
        round_overhead(args.rounds, args.repeats)
    for per_round in args.updates_per_round:
        verify_speed(args.entries, args.verify_reps, per_round)
    return 0


if __name__ == "__main__":
    sys.exit(main())
