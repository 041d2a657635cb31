"""Ledger entries: canonical bytes, the hash chain, and appends inside a store transaction.

An entry is (index, prev, time, kind, payload, hash, signature). ``payload`` is stored as
canonical JSON text and hashed as stored, so a verifier never re-encodes it; ``hash`` is
the SHA-256 of the canonical JSON of every other field plus the previous entry's
signature, so the newest entry's signature vouches, transitively, for every earlier entry
*and* every earlier signature (an edited signature breaks the next entry's hash).

Canonical JSON (what any tool can reproduce): ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` encoded as UTF-8; no NaN or
infinity; integers within +-2**53 (JSON readers that use doubles keep them exact); floats
written by Python's shortest round-trip ``repr`` (``0.1``, ``1e-05``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from consortia.core.errors import ConsortiaError

MAX_SAFE_INT = 2**53
GENESIS = "0" * 64  # the ``prev`` of entry 0

# Created with the server's other tables (server/store.py); the triggers stop accidents
# and careless tools, not an operator (who can drop them: verification catches that).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger ("
    " idx INTEGER PRIMARY KEY CHECK (idx >= 0),"
    " prev TEXT NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,"
    " hash TEXT NOT NULL UNIQUE, signature TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger"
    " BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger"
    " BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
)
COLUMNS = "idx, prev, time, kind, payload, hash, signature"


class LedgerError(ConsortiaError):
    """A ledger that cannot be written, read or trusted."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise LedgerError(f"{path}: integer {value} is beyond +-2**53")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LedgerError(f"{path}: {value} is not a finite number")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise LedgerError(f"{path}: keys must be text, got {type(k).__name__}")
            _check(v, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    raise LedgerError(f"{path}: a {type(value).__name__} has no canonical JSON form")


def canonical_json(obj: Any) -> str:
    """The one text of ``obj`` that is hashed (see the module's docstring for the rule)."""
    _check(obj, "payload")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def now_text() -> str:
    """UTC time with microseconds, e.g. ``2025-01-31T12:00:00.123456Z``: text, not a float,
    so that it hashes the same everywhere."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_text(value: str) -> str:
    """``json.dumps(value, ensure_ascii=False)``, quicker for the common case.

    Why: verification quotes six strings per entry; a printable ASCII string with no quote
    or backslash is written as itself between quotes (what ``json.dumps`` writes for it,
    with or without ``ensure_ascii``), and anything else goes through ``json.dumps``. A
    property test holds the two to the same text."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)


def hash_text(
    index: int, prev: str, prev_signature: str, time: str, kind: str, payload: str
) -> bytes:
    """The canonical JSON of an entry's hashed fields, built around the stored payload
    text (which is canonical already) so that verifying never re-parses it. Keys sorted:
    index, kind, payload, prev, prev_signature, time. ``prev`` and ``prev_signature``
    are written ASCII-only (any other character as a backslash-u escape), as they always
    were."""
    pv = json_text(prev) if prev.isascii() else json.dumps(prev)
    ps = json_text(prev_signature) if prev_signature.isascii() else json.dumps(prev_signature)
    return (
        f'{{"index":{index},"kind":{json_text(kind)},"payload":{payload},"prev":{pv},'
        f'"prev_signature":{ps},"time":{json_text(time)}}}'
    ).encode()


def entry_hash(
    index: int, prev: str, prev_signature: str, time: str, kind: str, payload: str
) -> str:
    return hashlib.sha256(hash_text(index, prev, prev_signature, time, kind, payload)).hexdigest()


@dataclass(frozen=True)
class Entry:
    index: int
    prev: str
    time: str
    kind: str
    payload: str  # canonical JSON text
    hash: str  # hex
    signature: str  # base64 of the server's Ed25519 signature over the hash's 32 bytes

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.payload)
        return out

    def to_json(self) -> dict[str, Any]:
        """The entry as exported (``audit show --json``, receipts)."""
        return {
            "index": self.index,
            "prev": self.prev,
            "time": self.time,
            "kind": self.kind,
            "payload": self.payload,
            "hash": self.hash,
            "signature": self.signature,
        }

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> Entry:
        try:
            e = Entry(
                int(obj["index"]),
                str(obj["prev"]),
                str(obj["time"]),
                str(obj["kind"]),
                str(obj["payload"]),
                str(obj["hash"]),
                str(obj["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"not a ledger entry ({exc})") from None
        return e


Sign = Callable[[bytes], str]  # 32 hash bytes -> base64 signature


def append(
    db: sqlite3.Connection, sign: Sign, items: Iterable[tuple[str, Mapping[str, Any]]]
) -> list[Entry]:
    """Append (kind, payload) items after the newest entry, inside the caller's open
    transaction: the entries commit (or roll back) with the state they describe."""
    row = db.execute("SELECT idx, hash, signature FROM ledger ORDER BY idx DESC LIMIT 1").fetchone()
    index, prev, prev_sig = (0, GENESIS, "") if row is None else (row[0] + 1, row[1], row[2])
    out: list[Entry] = []
    for kind, payload in items:
        text, time = canonical_json(dict(payload)), now_text()
        digest = entry_hash(index, prev, prev_sig, time, kind, text)
        sig = sign(bytes.fromhex(digest))
        entry = Entry(index, prev, time, kind, text, digest, sig)
        db.execute(
            f"INSERT INTO ledger ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (index, prev, time, kind, text, digest, sig),
        )
        out.append(entry)
        index, prev, prev_sig = index + 1, digest, sig
    return out


def read_entries(db: sqlite3.Connection) -> list[Entry]:
    """Every stored entry in index order, as stored (nothing checked: see ``verify``)."""
    try:
        rows = db.execute(f"SELECT {COLUMNS} FROM ledger ORDER BY idx").fetchall()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger ({exc})") from exc
    out: list[Entry] = []
    for r in rows:
        try:
            out.append(Entry(int(r[0]), *(str(v) for v in r[1:])))
        except (TypeError, ValueError):
            raise LedgerError(f"ledger row {r[0]!r} has a non-integer index") from None
    return out
