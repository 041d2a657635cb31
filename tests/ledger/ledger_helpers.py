"""A small finished simulation run with a ledger, and an operator's edits of its files."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from consortia.ledger.chain import Entry, read_entries
from consortia.simulation import simulate

TOY_JOB = Path(__file__).parent.parent / "fixtures" / "toy_job.toml"


def make_run(out: Path, rounds: int = 3) -> Path:
    simulate(TOY_JOB, rounds=rounds, out=out)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    # A closed store has its WAL merged into the file; readers may create (empty) -wal
    # and -shm files for a moment, which must not be copied half-gone.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "*-wal", "*-shm"))
    return dst


def entries(run: Path) -> list[Entry]:
    with sqlite3.connect(run / "state.sqlite") as db:
        return read_entries(db)


def rewrite(run: Path, rows: Sequence[Entry]) -> None:
    """What an operator with write access can do: drop the append-only triggers and put
    any rows in the ledger table."""
    db = sqlite3.connect(run / "state.sqlite")
    try:
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("DROP TRIGGER ledger_no_delete")
        db.execute("DELETE FROM ledger")
        db.executemany(
            "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(e.index, e.prev, e.time, e.kind, e.payload, e.hash, e.signature) for e in rows],
        )
        db.commit()
    finally:
        db.close()
