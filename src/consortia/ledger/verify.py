"""Verification: a pure function over the entries (and the files they name).

One pass recomputes every hash and link; the newest entry's server signature then
vouches for the whole chain, because each hash covers the previous entry's signature (an
entry's own signature is checked only where the chain points at it, or when the newest
one fails and the first bad signature must be found). Site signatures are independent
evidence and are all checked. Checkpoint files are hashed and their model digests
recomputed. The first problem, in index order, is what is reported.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
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


def _chain(entries: Sequence[Entry], public: str) -> Problem | None:
    """Indexes, links and hashes in one pass; then the newest signature."""
    prev, prev_sig = GENESIS, ""
    sha256 = hashlib.sha256
    for i, e in enumerate(entries):
        bad: str | None = None
        if e.index != i:
            return Problem(i, None, f"missing: the entry stored after {i - 1} is {e.index}")
        if e.prev != prev:
            bad = f"prev {e.prev[:16]}... is not the hash of entry {i - 1}"
        elif sha256(hash_text(i, prev, prev_sig, e.time, e.kind, e.payload)).hexdigest() != e.hash:
            bad = "its hash does not match its fields"
        if bad is not None:
            # An edited signature, or an edited entry re-hashed, shows as a broken link
            # here: the entry before is to blame if its own signature does not verify.
            if i > 0 and not server_signature_ok(public, entries[i - 1].hash, prev_sig):
                return Problem(i - 1, entries[i - 1].kind, "the server's signature does not verify")
            return Problem(i, e.kind, bad)
        prev, prev_sig = e.hash, e.signature
    if entries and not server_signature_ok(public, prev, prev_sig):
        # A chain rewritten without the key: find the first entry it could not sign.
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


def _contents(
    entries: Sequence[Entry],
    job: str,
    report: VerifyReport,
    read_file: ReadFile | None,
    model_digest: ModelDigest | None,
) -> Problem | None:
    """Site signatures (against the site's latest join) and checkpoint files."""
    identities: dict[str, SiteIdentity] = {}
    for e in entries:
        report.kinds[e.kind] = report.kinds.get(e.kind, 0) + 1
        if e.kind not in (K.SITE_JOINED, K.UPDATE_RECEIVED, K.CHECKPOINT_WRITTEN):
            continue
        data = _payload(e)
        if isinstance(data, Problem):
            return data
        try:
            if e.kind == K.SITE_JOINED:
                identities[str(data["site"])] = SiteIdentity(
                    str(data["key_type"]), str(data["public_key"]), data["certificate_serial"]
                )
            elif e.kind == K.UPDATE_RECEIVED:
                site = str(data["site"])
                identity = identities.get(site)
                if identity is None:
                    return Problem(e.index, e.kind, f"site {site!r} has no earlier site_joined")
                if identity.key_type == "none":
                    report.unsigned_updates += 1
                    continue
                message = update_message(job, int(data["round"]), str(data["update_sha256"]))
                report.site_signatures += 1
                if not site_signature_ok(identity, str(data["signature"]), message):
                    return Problem(e.index, e.kind, f"site {site!r}'s signature does not verify")
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
) -> VerifyReport:
    """Check a ledger. ``public_key`` (the published ``ledger.pub``) must match entry 0's;
    ``read_file`` lets checkpoints be checked; ``expected`` compares the ledger with what
    the server's other records say happened (a truncated tail shows there)."""
    t0 = time.perf_counter()
    report = VerifyReport(len(entries), entries[-1].hash if entries else None)
    report.problem = _verify(entries, public_key, read_file, model_digest, expected, report)
    report.seconds = time.perf_counter() - t0
    return report


def _verify(
    entries: Sequence[Entry],
    public_key: str | None,
    read_file: ReadFile | None,
    model_digest: ModelDigest | None,
    expected: Callable[[Sequence[Entry]], Problem | None] | None,
    report: VerifyReport,
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
    problems = [_chain(entries, public)]
    end = problems[0].index if problems[0] else len(entries)
    problems.append(_contents(entries[:end], job, report, read_file, model_digest))
    if expected is not None and problems[0] is None:
        problems.append(expected(entries))
    found = [p for p in problems if p is not None]
    return min(found, key=lambda p: p.index) if found else None
