"""Canonical JSON, the hash chain and appends inside a transaction, on a bare SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortia.ledger.chain import (
    SCHEMA,
    LedgerError,
    append,
    canonical_json,
    entry_hash,
    hash_text,
    json_text,
    read_entries,
)
from consortia.ledger.sign import LedgerKey, server_signature_ok
from consortia.ledger.verify import verify_entries

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_canonical_json_round_trips_to_the_same_text(payload: dict) -> None:
    text = canonical_json(payload)
    assert canonical_json(json.loads(text)) == text
    assert "\n" not in text.replace("\\n", "")


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), 2**53 + 1, b"bytes", {1: "int key"}, object()]
)
def test_canonical_json_refuses_what_has_no_single_text(bad: object) -> None:
    with pytest.raises(LedgerError):
        canonical_json({"x": bad})


@given(
    st.integers(0, 10**6),
    st.text(max_size=20),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=5), json_values, max_size=4),
)
def test_the_hash_text_is_the_canonical_json_of_the_fields(
    index: int, kind: str, sig: str, payload: dict
) -> None:
    """Anyone can recompute a hash with any JSON library: no re-encoding quirks."""
    text = canonical_json(payload)
    obj = {
        "index": index,
        "kind": kind,
        "payload": payload,
        "prev": "0" * 64,
        "prev_signature": sig,
        "time": "2025-01-01T00:00:00.000000Z",
    }
    mine = hash_text(index, "0" * 64, sig, "2025-01-01T00:00:00.000000Z", kind, text)
    assert json.loads(mine) == json.loads(canonical_json(obj))


def _db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in SCHEMA:
        db.execute(stmt)
    return db


def test_appends_chain_and_sign_and_the_table_refuses_edits(tmp_path: Path) -> None:
    key = LedgerKey.create(tmp_path)
    db = _db()
    first = {"job_id": "j", "ledger_public_key": key.public}
    append(db, key.sign, [("job_created", first), ("round_opened", {"round": 1})])
    append(db, key.sign, [("job_finished", {"status": "completed"})])
    entries = read_entries(db)
    assert [e.index for e in entries] == [0, 1, 2]
    assert entries[1].prev == entries[0].hash and entries[2].prev == entries[1].hash
    assert entries[2].hash == entry_hash(
        2,
        entries[1].hash,
        entries[1].signature,
        entries[2].time,
        "job_finished",
        entries[2].payload,
    )
    assert all(server_signature_ok(key.public, e.hash, e.signature) for e in entries)
    assert verify_entries(entries).ok
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE ledger SET payload = '{}' WHERE idx = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM ledger WHERE idx = 2")


def test_an_append_rolls_back_with_its_transaction(tmp_path: Path) -> None:
    key = LedgerKey.create(tmp_path)
    db = _db()
    append(db, key.sign, [("job_created", {"ledger_public_key": key.public})])
    db.execute("BEGIN")
    append(db, key.sign, [("round_opened", {"round": 1})])
    db.execute("ROLLBACK")
    assert [e.kind for e in read_entries(db)] == ["job_created"]


def test_the_private_key_file_is_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    LedgerKey.create(tmp_path)
    assert (tmp_path / "ledger.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        LedgerKey.create(tmp_path)


@given(st.text(max_size=80))
def test_the_quick_string_quoting_is_json_dumps(value: str) -> None:
    assert json_text(value) == json.dumps(value, ensure_ascii=False)


@given(
    prev=st.text(max_size=70),
    prev_signature=st.text(max_size=90),
    time=st.text(max_size=30),
    kind=st.text(max_size=20),
)
def test_the_hashed_text_is_the_canonical_json_of_the_fields(
    prev: str, prev_signature: str, time: str, kind: str
) -> None:
    """What ``hash_text`` splices together is what the documented rule writes (with
    ``prev`` and ``prev_signature`` escaped to ASCII, as entries were always hashed)."""
    payload = canonical_json({"a": [1, "é"]})
    fields = {"index": 7, "kind": kind, "prev": prev, "time": time}
    expected = json.dumps(
        {**fields, "payload": json.loads(payload), "prev_signature": prev_signature},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for name in ("prev", "prev_signature"):
        text = prev if name == "prev" else prev_signature
        expected = expected.replace(
            f'"{name}":{json.dumps(text, ensure_ascii=False)}', f'"{name}":{json.dumps(text)}', 1
        )
    assert hash_text(7, prev, prev_signature, time, kind, payload) == expected.encode()
