"""The adversary is an operator with write access to the run folder, after the fact.

Whatever entry they change, delete, move or insert (without the ledger key), or whatever
byte of a checkpoint they flip, ``consortia audit verify`` fails and names that entry.
Hypothesis picks the entry and the byte; each example edits a fresh copy of one run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import copy_run, entries, make_run, rewrite

from consortia.cli import main
from consortia.ledger.chain import Entry, entry_hash
from consortia.ledger.sign import LedgerKey
from consortia.server.ledger_check import verify_run

_copies = itertools.count()
FIELDS = ("time", "kind", "payload", "hash", "signature", "prev")
EXAMPLES = settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("ledger") / "run")


@pytest.fixture(scope="module")
def rows(run: Path) -> list[Entry]:
    return entries(run)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("copies")


def _copy(run: Path, scratch: Path) -> Path:
    return copy_run(run, scratch / f"c{next(_copies)}")


def _first_bad(run: Path) -> int | None:
    report, _ = verify_run(run)
    return None if report.problem is None else report.problem.index


def test_the_untouched_run_verifies_on_the_command_line(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", str(run)]) == 0
    assert "OK:" in capsys.readouterr().out
    assert main(["audit", "verify", "--json", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    kinds = out["kinds"]
    assert out["ok"] and out["site_signatures_checked"] == kinds["update_received"] > 0
    assert out["checkpoints_checked"] == 4  # the initial model and 3 rounds
    for kind in ("job_created", "site_joined", "round_opened", "round_closed", "job_finished"):
        assert kinds[kind] >= 1


@EXAMPLES
@given(data=st.data())
def test_changing_any_byte_of_any_entry_fails_at_that_entry(
    run: Path, rows: list[Entry], scratch: Path, data: st.DataObject
) -> None:
    rows = list(rows)
    i = data.draw(st.integers(0, len(rows) - 1), label="entry")
    name = data.draw(st.sampled_from(FIELDS), label="field")
    value = getattr(rows[i], name)
    if not value:
        return
    pos = data.draw(st.integers(0, len(value) - 1), label="position")
    new = data.draw(st.sampled_from([c for c in '0aZ{}"/+=:' if c != value[pos]]))
    rows[i] = dataclasses.replace(rows[i], **{name: value[:pos] + new + value[pos + 1 :]})
    copy = _copy(run, scratch)
    rewrite(copy, rows)
    assert _first_bad(copy) == i
    assert main(["audit", "verify", str(copy)]) == 1


@EXAMPLES
@given(data=st.data())
def test_deleting_any_entry_fails_at_its_index(
    run: Path, rows: list[Entry], scratch: Path, data: st.DataObject
) -> None:
    rows = list(rows)
    i = data.draw(st.integers(0, len(rows) - 1), label="entry")
    kept = [
        e if e.index < i else dataclasses.replace(e, index=e.index - 1)
        for e in rows
        if e.index != i
    ]
    copy = _copy(run, scratch)
    # Renumbered (the gap closed) or not: either way entry i is named.
    renumber = data.draw(st.booleans(), label="renumber")
    rewrite(copy, kept if renumber else [e for e in rows if e.index != i])
    assert _first_bad(copy) == i


@EXAMPLES
@given(data=st.data())
def test_reordering_entries_fails_at_the_first_moved_one(
    run: Path, rows: list[Entry], scratch: Path, data: st.DataObject
) -> None:
    rows = list(rows)
    i = data.draw(st.integers(0, len(rows) - 2), label="first")
    j = data.draw(st.integers(i + 1, len(rows) - 1), label="second")
    moved = list(rows)
    moved[i], moved[j] = (
        dataclasses.replace(rows[j], index=i),
        dataclasses.replace(rows[i], index=j),
    )
    copy = _copy(run, scratch)
    rewrite(copy, moved)
    assert _first_bad(copy) == i


@EXAMPLES
@given(data=st.data())
def test_inserting_an_entry_fails_at_the_inserted_one(
    run: Path, rows: list[Entry], scratch: Path, data: st.DataObject
) -> None:
    """The forged entry is well formed (right prev, right hash); only the key is missing."""
    rows = list(rows)
    i = data.draw(st.integers(1, len(rows)), label="position")
    prev = rows[i - 1]
    payload = json.dumps({"round": 1, "site": "site-0000", "reason": "forged"})
    time = "2030-01-01T00:00:00.000000Z"
    h = entry_hash(i, prev.hash, prev.signature, time, "update_refused", payload)
    forged = Entry(i, prev.hash, time, "update_refused", payload, h, rows[i - 1].signature)
    after = [dataclasses.replace(e, index=e.index + 1) for e in rows[i:]]
    copy = _copy(run, scratch)
    rewrite(copy, [*rows[:i], forged, *after])
    assert _first_bad(copy) == i


@EXAMPLES
@given(data=st.data())
def test_flipping_any_byte_of_a_checkpoint_fails_at_its_entry(
    run: Path, rows: list[Entry], scratch: Path, data: st.DataObject
) -> None:
    rows = [e for e in rows if e.kind == "checkpoint_written"]
    e = data.draw(st.sampled_from(rows), label="checkpoint")
    rel = json.loads(e.payload)["path"]
    copy = _copy(run, scratch)
    path = copy / rel
    content = bytearray(path.read_bytes())
    pos = data.draw(st.integers(0, len(content) - 1), label="byte")
    content[pos] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(content))
    report, _ = verify_run(copy)
    assert report.problem is not None and report.problem.index == e.index
    assert rel in report.problem.what


def test_a_deleted_checkpoint_or_a_replaced_public_key_is_named(
    run: Path, rows: list[Entry], scratch: Path
) -> None:
    copy = _copy(run, scratch)
    (copy / "checkpoints" / "round_0002.safetensors").unlink()
    report, _ = verify_run(copy)
    assert report.problem is not None and "missing" in report.problem.what
    assert json.loads(rows[report.problem.index].payload)["round"] == 2
    copy = _copy(run, scratch)
    LedgerKey.create(copy / "checkpoints")  # another key, published in its place
    (copy / "checkpoints" / "ledger.pub").replace(copy / "ledger.pub")
    report, _ = verify_run(copy)
    assert report.problem is not None and report.problem.index == 0
    assert "ledger.pub" in report.problem.what
