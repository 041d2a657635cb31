"""Verification: a pure function over the entries (and the files they name).

One pass recomputes every hash and link; the newest entry's server signature then
vouches for the whole chain, because each hash covers the previous entry's signature (an
entry's own signature is checked only where the chain points at it, or when the newest
one fails and the first bad signature must be found). Site signatures are independent
evidence and are all checked. Checkpoint files are hashed and their model digests
recomputed. The first problem, in index order, is what is reported.

Why the work is split the way it is: what costs is per entry (a SHA-256, a JSON parse, a
site's Ed25519 verification), and every entry can be checked on its own once the few
site_joined entries say which key each site had when. So those are read first, in
order, and then contiguous slices of the ledger are checked side by side, one process
per CPU (this one and forked ones: the entries are not copied to them), each reporting
its first problem.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from consortia.ledger import kinds as K
from consortia.ledger.chain import GENESIS, Entry, hash_text
from consortia.ledger.sign import (
    SiteIdentity,
    server_signature_ok,
    site_signature_ok,
    update_message,
)

# An entry costs ~0.1 ms to check (most of it a site's signature); from this many
# entries on, slices are checked in parallel, one process per CPU.
PARALLEL_FROM = 4000
Joins = dict[str, tuple[list[int], list[SiteIdentity]]]  # site -> (join indexes, keys)

ReadFile = Callable[[str], bytes | None]  # a run-folder-relative path -> its bytes, or None
ModelDigest = Callable[[bytes], str]  # a checkpoint file's bytes -> its model digest


@dataclass(frozen=True)
class Problem:
    """The first bad entry: its index, kind (if there is an entry there) and what is wrong."""

    index: int
    kind: str | None
    what: str

    def __str__(self) -> str:
        return f"entry {self.index} ({self.kind or 'missing'}): {self.what}"


@dataclass
class VerifyReport:
    entries: int
    head: str | None  # the newest entry's hash
    problem: Problem | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    site_signatures: int = 0
    unsigned_updates: int = 0  # from sites with no key (an insecure deployment)
    checkpoints: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "problem": None
            if self.problem is None
            else {
                "index": self.problem.index,
                "kind": self.problem.kind,
                "what": self.problem.what,
            },
            "kinds": self.kinds,
            "site_signatures_checked": self.site_signatures,
            "unsigned_updates": self.unsigned_updates,
            "checkpoints_checked": self.checkpoints,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class _Slice:
    """What checking one slice of the ledger found: its first broken link or hash (the
    slice's check stops there), and its first bad update before that."""

    chain: Problem | None = None
    update: Problem | None = None
    site_signatures: int = 0
    unsigned_updates: int = 0


def _link(entries: Sequence[Entry], i: int, public: str) -> Problem | None:
    """Entry ``i``'s index, link and hash."""
    e = entries[i]
    if e.index != i:
        return Problem(i, None, f"missing: the entry stored after {i - 1} is {e.index}")
    prev, prev_sig = (GENESIS, "") if i == 0 else (entries[i - 1].hash, entries[i - 1].signature)
    if e.prev != prev:
        bad = f"prev {e.prev[:16]}... is not the hash of entry {i - 1}"
    elif (
        hashlib.sha256(hash_text(i, prev, prev_sig, e.time, e.kind, e.payload)).hexdigest()
        != e.hash
    ):
        bad = "its hash does not match its fields"
    else:
        return None
    # An edited signature, or an edited entry re-hashed, shows as a broken link here:
    # the entry before is to blame if its own signature does not verify.
    if i > 0 and not server_signature_ok(public, entries[i - 1].hash, prev_sig):
        return Problem(i - 1, entries[i - 1].kind, "the server's signature does not verify")
    return Problem(i, e.kind, bad)


def _update(e: Entry, job: str, joins: Joins, found: _Slice) -> Problem | None:
    """An update_received entry's payload and its site's signature (against the key of
    the site's latest join before it)."""
    data = _payload(e)
    if isinstance(data, Problem):
        return data
    try:
        site = str(data["site"])
        indexes, keys = joins.get(site, ([], []))
        at = bisect.bisect_left(indexes, e.index)
        if at == 0:
            return Problem(e.index, e.kind, f"site {site!r} has no earlier site_joined")
        identity = keys[at - 1]
        if identity.key_type == "none":
            found.unsigned_updates += 1
            return None
        message = update_message(job, int(data["round"]), str(data["update_sha256"]))
        signature = str(data["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        return Problem(e.index, e.kind, f"its payload lacks or mistypes {exc}")
    found.site_signatures += 1
    if not site_signature_ok(identity, signature, message):
        return Problem(e.index, e.kind, f"site {site!r}'s signature does not verify")
    return None


def _check_slice(
    entries: Sequence[Entry], lo: int, hi: int, public: str, job: str, joins: Joins
) -> _Slice:
    """Links, hashes and update signatures of entries ``lo``..``hi - 1``. Links are
    checked past a bad update, so that the newest signature may vouch for the chain."""
    found = _Slice()
    for i in range(lo, hi):
        found.chain = _link(entries, i, public)
        if found.chain is not None:
            break
        if found.update is None and entries[i].kind == K.UPDATE_RECEIVED:
            found.update = _update(entries[i], job, joins, found)
    return found


# The forked workers' view of the ledger being checked (set just before they fork).
_SHARED: tuple[Sequence[Entry], str, str, Joins] | None = None


def _check_shared(bounds: tuple[int, int]) -> _Slice:
    assert _SHARED is not None
    entries, public, job, joins = _SHARED
    return _check_slice(entries, bounds[0], bounds[1], public, job, joins)


def _check_all(
    entries: Sequence[Entry],
    public: str,
    job: str,
    joins: Joins,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM,
) -> list[_Slice]:
    """Every slice's findings, in index order; in parallel for a long ledger."""
    global _SHARED
    n = len(entries)
    workers = workers or os.cpu_count() or 1
    forking = "fork" in multiprocessing.get_all_start_methods()
    if n < parallel_from or workers < 2 or not forking:
        return [_check_slice(entries, 0, n, public, job, joins)]
    size = -(-n // workers)
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    _SHARED = (entries, public, job, joins)
    # Frozen objects are left out of the children's garbage collections, which would
    # otherwise touch (and so copy) every page of the entries they inherited.
    gc.freeze()
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(bounds) - 1, mp_context=ctx) as pool:
            rest = pool.map(_check_shared, bounds[1:])
            first = _check_shared(bounds[0])  # this process takes a slice too
            return [first, *rest]
    finally:
        gc.unfreeze()
        _SHARED = None


def _newest_signature(entries: Sequence[Entry], public: str) -> Problem | None:
    """The newest signature vouches for the chain; if it fails, the chain was rewritten
    without the key: find the first entry it could not sign."""
    if not entries or server_signature_ok(public, entries[-1].hash, entries[-1].signature):
        return None
    for e in entries:
        if not server_signature_ok(public, e.hash, e.signature):
            return Problem(e.index, e.kind, "the server's signature does not verify")
    return None


def _payload(e: Entry) -> dict[str, Any] | Problem:
    try:
        data = json.loads(e.payload)
    except ValueError:
        return Problem(e.index, e.kind, "its payload is not JSON")
    if not isinstance(data, dict):
        return Problem(e.index, e.kind, "its payload is not a JSON object")
    return data


def _joins_and_checkpoints(
    entries: Sequence[Entry],
    report: VerifyReport,
    read_file: ReadFile | None,
    model_digest: ModelDigest | None,
    joins: Joins,
) -> Problem | None:
    """In index order: each site's keys from its site_joined entries, and the checkpoint
    files; the first problem among those entries."""
    for e in entries:
        report.kinds[e.kind] = report.kinds.get(e.kind, 0) + 1
        if e.kind not in (K.SITE_JOINED, K.CHECKPOINT_WRITTEN):
            continue
        data = _payload(e)
        if isinstance(data, Problem):
            return data
        try:
            if e.kind == K.SITE_JOINED:
                indexes, keys = joins.setdefault(str(data["site"]), ([], []))
                indexes.append(e.index)
                keys.append(
                    SiteIdentity(
                        str(data["key_type"]), str(data["public_key"]), data["certificate_serial"]
                    )
                )
            elif read_file is not None:
                problem = _checkpoint(e, data, read_file, model_digest)
                report.checkpoints += 1
                if problem is not None:
                    return problem
        except (KeyError, TypeError, ValueError) as exc:
            return Problem(e.index, e.kind, f"its payload lacks or mistypes {exc}")
    return None


def _checkpoint(
    e: Entry, data: dict[str, Any], read_file: ReadFile, model_digest: ModelDigest | None
) -> Problem | None:
    files = [(str(data["path"]), str(data["sha256"]))]
    if data.get("optimizer_path"):
        files.append((str(data["optimizer_path"]), str(data["optimizer_sha256"])))
    for path, digest in files:
        content = read_file(path)
        if content is None:
            return Problem(e.index, e.kind, f"{path} is missing")
        actual = hashlib.sha256(content).hexdigest()
        if actual != digest:
            return Problem(
                e.index, e.kind, f"{path} has sha256 {actual[:16]}..., recorded {digest[:16]}..."
            )
        if path == files[0][0] and model_digest is not None and data.get("model_digest"):
            try:
                found = model_digest(content)
            except Exception as exc:  # a file that hashes right but does not parse
                return Problem(e.index, e.kind, f"{path} does not parse ({exc})")
            if found != data["model_digest"]:
                return Problem(e.index, e.kind, f"{path} holds another model than recorded")
    return None


def verify_entries(
    entries: Sequence[Entry],
    *,
    public_key: str | None = None,
    read_file: ReadFile | None = None,
    model_digest: ModelDigest | None = None,
    expected: Callable[[Sequence[Entry]], Problem | None] | None = None,
    workers: int | None = None,
    parallel_from: int = PARALLEL_FROM,
) -> VerifyReport:
    """Check a ledger. ``public_key`` (the published ``ledger.pub``) must match entry 0's;
    ``read_file`` lets checkpoints be checked; ``expected`` compares the ledger with what
    the server's other records say happened (a truncated tail shows there)."""
    t0 = time.perf_counter()
    report = VerifyReport(len(entries), entries[-1].hash if entries else None)
    report.problem = _verify(
        entries, public_key, read_file, model_digest, expected, report, workers, parallel_from
    )
    report.seconds = time.perf_counter() - t0
    return report


def _verify(
    entries: Sequence[Entry],
    public_key: str | None,
    read_file: ReadFile | None,
    model_digest: ModelDigest | None,
    expected: Callable[[Sequence[Entry]], Problem | None] | None,
    report: VerifyReport,
    workers: int | None,
    parallel_from: int,
) -> Problem | None:
    if not entries:
        return Problem(0, None, "the ledger is empty")
    first = entries[0]
    data = _payload(first)
    if isinstance(data, Problem):
        return data
    if first.kind != K.JOB_CREATED or not isinstance(data.get("ledger_public_key"), str):
        return Problem(0, first.kind, "the first entry must be job_created with the public key")
    public, job = data["ledger_public_key"], str(data.get("job_id"))
    if public_key is not None and public_key != public:
        return Problem(0, first.kind, "its public key is not the one in ledger.pub")
    joins: Joins = {}
    joined = _joins_and_checkpoints(entries, report, read_file, model_digest, joins)
    slices = _check_all(entries, public, job, joins, workers, parallel_from)
    report.site_signatures = sum(f.site_signatures for f in slices)
    report.unsigned_updates = sum(f.unsigned_updates for f in slices)
    chain = next((f.chain for f in slices if f.chain is not None), None)
    # In order of precedence where two fall on one entry (min keeps the first).
    candidates = [chain or _newest_signature(entries, public), joined]
    candidates += [f.update for f in slices]
    if expected is not None and not any(candidates):
        candidates.append(expected(entries))
    found = [p for p in candidates if p is not None]
    return min(found, key=lambda p: p.index) if found else None
