"""Site receipts: the server's signed ledger entry for each update, kept by the site.

Once a round commits, every site whose update was recorded is owed a ``receipt`` message
(delivered in batches: server/receipt_outbox.py):
the ``update_received`` entry (with the previous entry's signature, so the site can
recompute the hash) and the ledger's public key. The site checks that the entry names
its update (the digest it signed), that the hash matches and that the signature verifies,
and appends it to its own file (JSON lines). Later, ``audit verify --site FILE RUN_DIR``
proves whether the run still holds each receipted entry unchanged: a dropped or altered
contribution shows, even if the operator re-signed a rewritten chain with a new key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortia.core.messages import InvalidMessageError, register_kind
from consortia.ledger import kinds as K
from consortia.ledger.chain import Entry, LedgerError, entry_hash
from consortia.ledger.sign import server_signature_ok
from consortia.ledger.verify import Problem

MAX_PAYLOAD_CHARS = 4000  # under the gRPC codec's 4096-character limit on one text


@dataclass(frozen=True)
class ReceiptIns:
    """Server -> site: the ledger entry recording this site's update of ``round``."""

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


@dataclass(frozen=True)
class ReceiptRes:
    site: str
    round: int
    stored: bool
    reason: str = ""


def _check_request(ins: ReceiptIns) -> None:
    if ins.index < 0 or ins.kind != K.UPDATE_RECEIVED:
        raise InvalidMessageError("a receipt is the update_received entry of a site's update")
    if len(ins.payload) > MAX_PAYLOAD_CHARS:
        raise InvalidMessageError(f"receipt payload longer than {MAX_PAYLOAD_CHARS} characters")
    for name in ("prev", "hash"):
        value = getattr(ins, name)
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise InvalidMessageError(f"receipt {name} is not a SHA-256 in hex")


def _check_reply(reply: ReceiptRes, request: ReceiptIns) -> None:
    if len(reply.reason) > 2000:
        raise InvalidMessageError("receipt reply reason is too long")


RECEIPT = register_kind(
    "receipt",
    ReceiptIns,
    ReceiptRes,
    check=_check_reply,
    reply_arrays=lambda req: {},
    check_request=_check_request,
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


class ReceiptBook:
    """A site's receipts: one JSON line each, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def add(self, ins: ReceiptIns) -> bool:
        """Keep ``ins``; False if this very receipt is already kept (a resumed server
        sends again what it cannot know was delivered)."""
        held = [r for r in self.read() if r.get("job") == ins.job]
        pinned = {r.get("ledger_public_key") for r in held}
        if pinned and ins.public_key not in pinned:
            raise LedgerError(
                f"job {ins.job!r}: this receipt's ledger key differs from earlier receipts'"
            )
        entry = ins.entry.to_json()
        for r in held:
            if r["entry"].get("index") == ins.index:
                if r["entry"] == entry:
                    return False
                raise LedgerError(
                    f"job {ins.job!r}: entry {ins.index} differs from the receipt kept for it "
                    "earlier (the earlier one is kept as it was)"
                )
        line = {
            "job": ins.job,
            "round": ins.round,
            "ledger_public_key": ins.public_key,
            "prev_signature": ins.prev_signature,
            "entry": entry,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

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
