"""Site receipts: the server's signed ledger entry for each update, kept by the site.

Once a round commits, every site whose update was recorded is owed a receipt: the
``update_received`` entry (with the previous entry's signature, so the site can recompute
the hash) and the ledger's public key. Receipts travel in batches, a ``receipts`` message
carrying every receipt one site is owed (server/receipt_outbox.py says when). The site
checks that each entry names its update (the digest it signed), that the hash matches and
that the signature verifies, and appends the receipts to its own file (JSON lines, one
write and one fsync a batch). Later, ``audit verify --site FILE RUN_DIR`` proves whether
the run still holds each receipted entry unchanged: a dropped or altered contribution
shows, even if the operator re-signed a rewritten chain with a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consortia.core.messages import InvalidMessageError, register_kind
from consortia.ledger import kinds as K
from consortia.ledger.chain import Entry, LedgerError, entry_hash
from consortia.ledger.sign import server_signature_ok
from consortia.ledger.verify import Problem

MAX_PAYLOAD_CHARS = 16_000  # a receipt's payload (an update_received entry's is ~400)
_HEX = frozenset("0123456789abcdef")
# A batch holds at most this many receipts (a site owed more gets several batches in the
# same exchange).
MAX_BATCH = 200
_MAX_FIELD_CHARS = 200
_FIELDS = (
    "round",
    "index",
    "prev",
    "prev_signature",
    "time",
    "kind",
    "payload",
    "hash",
    "signature",
)
MAX_BATCH_BYTES = MAX_BATCH * (MAX_PAYLOAD_CHARS + 1000)


@dataclass(frozen=True)
class ReceiptIns:
    """One receipt: the ledger entry recording a site's update of ``round``."""

    round: int
    job: str
    index: int
    prev: str
    prev_signature: str
    time: str
    kind: str
    payload: str
    hash: str
    signature: str
    public_key: str

    @property
    def entry(self) -> Entry:
        return Entry(
            self.index, self.prev, self.time, self.kind, self.payload, self.hash, self.signature
        )

    @staticmethod
    def of(job: str, entry: Entry, prev_signature: str, public_key: str) -> ReceiptIns:
        data = entry.data()
        return ReceiptIns(
            int(data["round"]),
            job,
            entry.index,
            entry.prev,
            prev_signature,
            entry.time,
            entry.kind,
            entry.payload,
            entry.hash,
            entry.signature,
            public_key,
        )


def check_fields(ins: ReceiptIns) -> None:
    """A receipt's shape, before anything is computed from it."""
    if ins.index < 0 or ins.kind != K.UPDATE_RECEIVED:
        raise InvalidMessageError("a receipt is the update_received entry of a site's update")
    if len(ins.payload) > MAX_PAYLOAD_CHARS:
        raise InvalidMessageError(f"receipt payload longer than {MAX_PAYLOAD_CHARS} characters")
    for name in ("prev", "hash"):
        value = getattr(ins, name)
        if len(value) != 64 or not set(value) <= _HEX:
            raise InvalidMessageError(f"receipt {name} is not a SHA-256 in hex")
    for name in ("prev_signature", "signature", "time"):
        if len(getattr(ins, name)) > _MAX_FIELD_CHARS:
            raise InvalidMessageError(
                f"receipt {name} is longer than {_MAX_FIELD_CHARS} characters"
            )


@dataclass(frozen=True)
class ReceiptsIns:
    """Server -> site: receipts of this site's updates, oldest first. ``round`` is the
    newest receipt's; ``receipts`` is UTF-8 JSON, a list of objects with the fields of
    ``ReceiptIns`` other than ``job`` and ``public_key`` (which the batch holds once)."""

    round: int
    job: str
    public_key: str
    receipts: np.ndarray  # uint8

    @staticmethod
    def of(batch: Sequence[ReceiptIns]) -> ReceiptsIns:
        if not 0 < len(batch) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} receipts, not {len(batch)}")
        first = batch[0]
        if any((r.job, r.public_key) != (first.job, first.public_key) for r in batch):
            raise ValueError("a batch holds receipts of one job under one key")
        text = json.dumps([{f: getattr(r, f) for f in _FIELDS} for r in batch])
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        return ReceiptsIns(max(r.round for r in batch), first.job, first.public_key, data)

    def items(self) -> list[ReceiptIns]:
        """The receipts, each checked for shape; InvalidMessageError if any is not."""
        if self.receipts.dtype != np.uint8 or self.receipts.size > MAX_BATCH_BYTES:
            raise InvalidMessageError(f"a receipts batch is at most {MAX_BATCH_BYTES} bytes")
        try:
            raw = json.loads(self.receipts.tobytes().decode())
        except (UnicodeDecodeError, ValueError):
            raise InvalidMessageError("a receipts batch is not UTF-8 JSON") from None
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BATCH:
            raise InvalidMessageError(f"a receipts batch is a list of 1 to {MAX_BATCH} receipts")
        out = []
        for item in raw:
            if not isinstance(item, dict) or set(item) != set(_FIELDS):
                raise InvalidMessageError(f"a receipt has exactly the fields {', '.join(_FIELDS)}")
            ints = (item["round"], item["index"])
            texts = [item[f] for f in _FIELDS[2:]]
            if not all(type(v) is int for v in ints) or not all(type(v) is str for v in texts):
                raise InvalidMessageError("a receipt's round and index are integers, the rest text")
            ins = ReceiptIns(
                round=item["round"],
                job=self.job,
                index=item["index"],
                prev=item["prev"],
                prev_signature=item["prev_signature"],
                time=item["time"],
                kind=item["kind"],
                payload=item["payload"],
                hash=item["hash"],
                signature=item["signature"],
                public_key=self.public_key,
            )
            check_fields(ins)
            out.append(ins)
        return out


@dataclass(frozen=True)
class ReceiptsRes:
    """How many of the batch's receipts the site newly kept, already held, refused (with
    the first refusal's reason)."""

    site: str
    round: int
    kept: int
    held: int
    refused: int
    reason: str = ""


def _check_batch(ins: ReceiptsIns) -> None:
    if len(ins.job) > _MAX_FIELD_CHARS or len(ins.public_key) > _MAX_FIELD_CHARS:
        raise InvalidMessageError("a receipts batch's job or key is too long")
    ins.items()


def _check_reply(reply: ReceiptsRes, request: ReceiptsIns) -> None:
    counts = (reply.kept, reply.held, reply.refused)
    if not all(type(c) is int and 0 <= c <= MAX_BATCH for c in counts):
        raise InvalidMessageError(f"receipt counts must be integers 0..{MAX_BATCH}")
    if len(reply.reason) > 2000:
        raise InvalidMessageError("receipt reply reason is too long")


RECEIPTS = register_kind(
    "receipts",
    ReceiptsIns,
    ReceiptsRes,
    check=_check_reply,
    reply_arrays=lambda req: {},
    check_request=_check_batch,
)


def check_receipt(ins: ReceiptIns, site: str, signed_digest: str | None) -> None:
    """What a site checks before keeping a receipt; raises LedgerError."""
    try:
        data = ins.entry.data()
    except ValueError:
        raise LedgerError("the receipt's payload is not JSON") from None
    if data.get("site") != site or data.get("round") != ins.round:
        raise LedgerError(f"the receipt is for {data.get('site')!r} round {data.get('round')}")
    if signed_digest is not None and data.get("update_sha256") != signed_digest:
        raise LedgerError("the receipt records another update than the one this site signed")
    expect = entry_hash(ins.index, ins.prev, ins.prev_signature, ins.time, ins.kind, ins.payload)
    if expect != ins.hash:
        raise LedgerError("the receipt's hash does not match its fields")
    if not server_signature_ok(ins.public_key, ins.hash, ins.signature):
        raise LedgerError("the receipt's signature does not verify with its public key")


Stamp = tuple[int, int, int]  # a file's inode, size and modification time (ns)


def _entry_key(entry: dict[str, Any]) -> bytes:
    """What tells two receipts of one index apart, in 32 bytes."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).digest()


@dataclass
class _Index:
    """What a receipts file holds, as of ``stamp``: each job's pinned key and, per (job,
    index), a digest of the entry kept."""

    stamp: Stamp | None
    pinned: dict[str, str]
    held: dict[tuple[str, int], bytes]


class ReceiptBook:
    """A site's receipts: one JSON line each, appended and fsynced.

    What the file holds is indexed once and kept up to date with this book's own
    writes, so a site that has kept thousands of receipts does not parse its whole file
    again for every batch; a file changed by anyone else (another stamp) is read again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._index: _Index | None = None

    def _stamp(self) -> Stamp | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _current(self) -> _Index:
        stamp = self._stamp()
        if self._index is not None and self._index.stamp == stamp:
            return self._index
        index = _Index(stamp, {}, {})
        for r in self.read():
            job = str(r.get("job"))
            index.pinned.setdefault(job, str(r.get("ledger_public_key")))
            index.held[(job, int(r["entry"].get("index", -1)))] = _entry_key(r["entry"])
        self._index = index
        return index

    def add(self, ins: ReceiptIns) -> bool:
        """Keep ``ins``; False if this very receipt is already kept; LedgerError if it is
        refused."""
        kept, _, refused = self.add_many([ins])
        if refused:
            raise LedgerError(refused[0])
        return kept == 1

    def add_many(self, batch: Sequence[ReceiptIns]) -> tuple[int, int, list[str]]:
        """Keep each receipt of ``batch`` not already kept, in one write and one fsync;
        (newly kept, already held, why each other one was refused). A resumed server sends
        again what it cannot know was delivered, so a receipt already kept is skipped; one
        under another ledger key than the job's first, or another entry under an index
        already held, is refused (the earlier receipt stays as it was: evidence)."""
        index = self._current()
        pinned, held = dict(index.pinned), dict(index.held)
        lines, old, refused = [], 0, []
        for ins in batch:
            if pinned.setdefault(ins.job, ins.public_key) != ins.public_key:
                refused.append(
                    f"job {ins.job!r}: this receipt's ledger key differs from earlier receipts'"
                )
                continue
            entry = ins.entry.to_json()
            key = _entry_key(entry)
            before = held.get((ins.job, ins.index))
            if before is not None:
                if before == key:
                    old += 1
                else:
                    refused.append(
                        f"job {ins.job!r}: entry {ins.index} differs from the receipt kept for "
                        "it earlier (the earlier one is kept as it was)"
                    )
                continue
            held[(ins.job, ins.index)] = key
            line = {
                "job": ins.job,
                "round": ins.round,
                "ledger_public_key": ins.public_key,
                "prev_signature": ins.prev_signature,
                "entry": entry,
            }
            lines.append(json.dumps(line, sort_keys=True) + "\n")
        if lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = "".join(lines).encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            # Only now does the file hold them (a failed write leaves the index as it was);
            # a size other than ours plus what we wrote means someone else wrote too.
            stamp = self._stamp()
            ours = (index.stamp[1] if index.stamp else 0) + len(data)
            ok = stamp is not None and stamp[1] == ours
            self._index = _Index(stamp, pinned, held) if ok else None
        return len(lines), old, refused

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise LedgerError(f"{self.path}:{n}: not a receipt (bad JSON)") from None
            if not isinstance(item, dict) or not isinstance(item.get("entry"), dict):
                raise LedgerError(f"{self.path}:{n}: not a receipt")
            out.append(item)
        return out


def check_run_against(
    receipts: Sequence[dict[str, Any]], entries: Sequence[Entry], job: str
) -> tuple[int, Problem | None]:
    """(receipts checked, the first problem): each receipt of this job must be in the
    ledger unchanged; a receipt that itself does not verify is reported as such."""
    checked = 0
    by_index = {e.index: e for e in entries}
    for r in sorted(receipts, key=lambda r: int(r["entry"].get("index", -1))):
        if r.get("job") != job:
            continue
        mine = Entry.from_json(r["entry"])
        ins = ReceiptIns(
            int(r["round"]),
            job,
            mine.index,
            mine.prev,
            str(r.get("prev_signature", "")),
            mine.time,
            mine.kind,
            mine.payload,
            mine.hash,
            mine.signature,
            str(r["ledger_public_key"]),
        )
        site = mine.data().get("site")
        where = f"site {site!r} round {r['round']}"
        try:
            check_receipt(ins, str(site), None)
        except LedgerError as exc:
            return checked, Problem(mine.index, mine.kind, f"the receipt of {where}: {exc}")
        checked += 1
        theirs = by_index.get(mine.index)
        if theirs is None:
            return checked, Problem(
                mine.index, None, f"dropped: the ledger has no entry for the receipt of {where}"
            )
        if theirs != mine:
            return checked, Problem(
                mine.index,
                theirs.kind,
                f"altered: the ledger's entry differs from the receipt of {where}",
            )
    return checked, None
