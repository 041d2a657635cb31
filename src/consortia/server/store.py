"""The server's state in SQLite: the job, its rounds, who took part, checkpoint digests.

One file (``state.sqlite`` in the run folder), nothing to start. WAL journal with
``synchronous=FULL``: a completed round is one transaction, committed only after its
checkpoint files are on disk, so after a crash (even SIGKILL mid-write) the store names
the last round whose checkpoint is whole, and the digest stored with it proves the file
was not changed since. Stdlib ``sqlite3`` only; nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from consortia.core.errors import ConsortiaError, ModelFileError
from consortia.core.serialize import model_chunks, model_from_bytes
from consortia.core.spec import ModelSpec
from consortia.ledger import chain as ledger_chain
from consortia.ledger.chain import Entry

SCHEMA_VERSION = 1
STORE_FILE = "state.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_digest TEXT NOT NULL,
    spec_digest TEXT NOT NULL,
    rounds INTEGER NOT NULL CHECK (rounds >= 1),
    initial_checkpoint TEXT NOT NULL,
    initial_digest TEXT NOT NULL,
    initial_optimizer_digest TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'budget_exhausted')),
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    number INTEGER PRIMARY KEY CHECK (number >= 1),
    status TEXT NOT NULL CHECK (status IN ('completed', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 1,
    seconds REAL,
    metrics TEXT,
    error TEXT,
    checkpoint TEXT,
    checkpoint_digest TEXT,
    optimizer_digest TEXT,
    model_digest TEXT,
    finished REAL NOT NULL,
    CHECK (status = 'failed' OR (checkpoint IS NOT NULL AND checkpoint_digest IS NOT NULL))
);
CREATE TABLE IF NOT EXISTS participants (
    round INTEGER NOT NULL,
    site TEXT NOT NULL,
    phase TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('replied', 'failed')),
    reason TEXT,
    PRIMARY KEY (round, site, phase)
);
-- Ledger entries whose receipt its site has answered (server/receipt_outbox.py).
CREATE TABLE IF NOT EXISTS receipts_delivered (idx INTEGER PRIMARY KEY);
"""

# (kind, payload) items appended to the ledger inside a state change's own transaction
LedgerItems = Sequence[tuple[str, Mapping[str, Any]]]


class StoreError(ConsortiaError):
    """The server's state file is missing, from another job, or inconsistent."""


@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    job_digest: str
    spec_digest: str
    rounds: int
    initial_checkpoint: str
    initial_digest: str
    initial_optimizer_digest: str | None
    status: str


@dataclass(frozen=True)
class RoundRow:
    """A completed round: its metrics row (as in metrics.jsonl) and its checkpoint."""

    number: int
    seconds: float
    metrics: dict[str, Any]
    checkpoint: str  # relative to the run folder
    checkpoint_digest: str  # sha256 of the model file's bytes
    optimizer_digest: str | None  # sha256 of the optimiser-state file, None if stateless
    model_digest: str  # consortia.core.spec.model_digest of the weights


@dataclass(frozen=True)
class Participant:
    site: str
    phase: str
    outcome: str  # 'replied' | 'failed'
    reason: str | None = None


class ServerStore:
    """The SQLite state of one job. Used from the server's main thread only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Set by the run driver when the job keeps a ledger: signs each appended entry.
        self.ledger_sign: ledger_chain.Sign | None = None
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                # Statement by statement: executescript() would commit on its own.
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                for stmt in ledger_chain.SCHEMA:  # triggers hold ';': one by one
                    self._db.execute(stmt)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            (version,) = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable consortia state file ({exc})") from exc
        if int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: state schema version {version}, this consortia reads "
                f"{SCHEMA_VERSION}"
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- job -----------------------------------------------------------------------------

    def job(self) -> JobRow | None:
        row = self._db.execute(
            "SELECT id, name, job_digest, spec_digest, rounds, initial_checkpoint, "
            "initial_digest, initial_optimizer_digest, status FROM job"
        ).fetchone()
        return None if row is None else JobRow(*row)

    def create_job(self, job: JobRow, ledger: LedgerItems = ()) -> list[Entry]:
        now = time.time()
        with self._transaction() as db:
            if db.execute("SELECT COUNT(*) FROM job").fetchone()[0]:
                raise StoreError(f"{self.path} already holds a job; it is never overwritten")
            db.execute(
                "INSERT INTO job VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.name,
                    job.job_digest,
                    job.spec_digest,
                    job.rounds,
                    job.initial_checkpoint,
                    job.initial_digest,
                    job.initial_optimizer_digest,
                    job.status,
                    now,
                    now,
                ),
            )
            return self._append(db, ledger)

    def set_job(
        self, *, status: str | None = None, rounds: int | None = None, ledger: LedgerItems = ()
    ) -> None:
        with self._transaction() as db:
            self._append(db, ledger)
            if status is not None:
                db.execute("UPDATE job SET status = ?, updated = ?", (status, time.time()))
            if rounds is not None:
                db.execute("UPDATE job SET rounds = ?, updated = ?", (rounds, time.time()))

    # ---- rounds --------------------------------------------------------------------------

    def commit_round(
        self, row: RoundRow, participants: Sequence[Participant], ledger: LedgerItems = ()
    ) -> list[Entry]:
        """Record a completed round, its participants and its ledger entries in ONE
        transaction; return the entries as appended.

        The caller has already written (and fsynced) the checkpoint files named here, so
        a committed round always has its checkpoint on disk.
        """
        with self._transaction() as db:
            done = db.execute(
                "SELECT status FROM rounds WHERE number = ?", (row.number,)
            ).fetchone()
            if done is not None and done[0] == "completed":
                raise StoreError(f"round {row.number} is already recorded as completed")
            last = self._last_completed_number(db)
            if row.number != last + 1:
                raise StoreError(
                    f"round {row.number} cannot follow round {last}: rounds complete in order"
                )
            attempts = 1 + (self._attempts(db, row.number) if done is not None else 0)
            db.execute("DELETE FROM rounds WHERE number = ?", (row.number,))
            db.execute("DELETE FROM participants WHERE round = ?", (row.number,))
            db.execute(
                "INSERT INTO rounds (number, status, attempts, seconds, metrics, checkpoint, "
                "checkpoint_digest, optimizer_digest, model_digest, finished) "
                "VALUES (?, 'completed', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.number,
                    attempts,
                    row.seconds,
                    json.dumps(row.metrics),
                    row.checkpoint,
                    row.checkpoint_digest,
                    row.optimizer_digest,
                    row.model_digest,
                    time.time(),
                ),
            )
            self._insert_participants(db, row.number, participants)
            db.execute("UPDATE job SET updated = ?", (time.time(),))
            return self._append(db, ledger)

    def record_failed_attempt(
        self,
        number: int,
        error: str,
        participants: Sequence[Participant],
        ledger: LedgerItems = (),
    ) -> None:
        """A round that did not complete (too few replies): kept for the record; the round
        is tried again and a later success replaces this row."""
        with self._transaction() as db:
            attempts = 1 + self._attempts(db, number)
            db.execute("DELETE FROM rounds WHERE number = ?", (number,))
            db.execute("DELETE FROM participants WHERE round = ?", (number,))
            db.execute(
                "INSERT INTO rounds (number, status, attempts, error, finished) "
                "VALUES (?, 'failed', ?, ?, ?)",
                (number, attempts, error[:2000], time.time()),
            )
            self._insert_participants(db, number, participants)
            self._append(db, ledger)

    # ---- ledger --------------------------------------------------------------------------

    def _append(self, db: sqlite3.Connection, items: LedgerItems) -> list[Entry]:
        if not items:
            return []
        if self.ledger_sign is None:
            raise StoreError("ledger entries to append, but no ledger key was given")
        return ledger_chain.append(db, self.ledger_sign, items)

    def append(self, items: LedgerItems) -> list[Entry]:
        """Entries that describe no other state change (a resumed job)."""
        with self._transaction() as db:
            return self._append(db, items)

    def ledger(self) -> list[Entry]:
        return ledger_chain.read_entries(self._db)

    def mark_receipts_delivered(self, indexes: Sequence[int]) -> None:
        if not indexes:
            return
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO receipts_delivered VALUES (?)", [(i,) for i in indexes]
            )

    def receipts_delivered(self) -> set[int]:
        return {int(r[0]) for r in self._db.execute("SELECT idx FROM receipts_delivered")}

    @staticmethod
    def _attempts(db: sqlite3.Connection, number: int) -> int:
        row = db.execute("SELECT attempts FROM rounds WHERE number = ?", (number,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _insert_participants(
        db: sqlite3.Connection, number: int, participants: Sequence[Participant]
    ) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO participants VALUES (?, ?, ?, ?, ?)",
            [(number, p.site, p.phase, p.outcome, p.reason) for p in participants],
        )

    @staticmethod
    def _last_completed_number(db: sqlite3.Connection) -> int:
        (n,) = db.execute(
            "SELECT COALESCE(MAX(number), 0) FROM rounds WHERE status = 'completed'"
        ).fetchone()
        return int(n)

    def completed_rounds(self) -> list[RoundRow]:
        rows = self._db.execute(
            "SELECT number, seconds, metrics, checkpoint, checkpoint_digest, optimizer_digest, "
            "model_digest FROM rounds WHERE status = 'completed' ORDER BY number"
        ).fetchall()
        return [RoundRow(n, s, json.loads(m), c, cd, od, md) for n, s, m, c, cd, od, md in rows]

    def last_completed(self) -> RoundRow | None:
        rows = self.completed_rounds()
        return rows[-1] if rows else None

    def participants(self, number: int) -> list[Participant]:
        rows = self._db.execute(
            "SELECT site, phase, outcome, reason FROM participants WHERE round = ? "
            "ORDER BY phase, site",
            (number,),
        ).fetchall()
        return [Participant(*r) for r in rows]

    def failed_attempts(self) -> list[tuple[int, int, str]]:
        """(round, attempts, error) of rounds whose latest attempt failed."""
        rows = self._db.execute(
            "SELECT number, attempts, error FROM rounds WHERE status = 'failed' ORDER BY number"
        ).fetchall()
        return [(int(n), int(a), str(e)) for n, a, e in rows]

    def dump(self) -> list[str]:
        """Every row as SQL text: what tests compare to prove nothing changed."""
        return list(self._db.iterdump())


# ---- checkpoint files ------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_durably(path: Path, data: bytes | Sequence[bytes | memoryview]) -> str:
    """Write ``data`` (bytes, or chunks written in order) to ``path`` atomically and
    durably; return the sha256 of what was written.

    Temp file, fsync, rename, fsync of the folder: after a crash at any instant the path
    holds either nothing (or the previous file) or all of ``data``, never a torn file.
    """
    chunks = [data] if isinstance(data, bytes) else data
    h = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in chunks:
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return h.hexdigest()


def optimizer_path(model_path: Path) -> Path:
    """Where a checkpoint's server-optimiser state lives (the run folder's layout)."""
    return model_path.with_name(model_path.name.replace(".safetensors", ".optimizer.safetensors"))


def write_checkpoint(
    path: Path,
    spec: ModelSpec,
    weights: np.ndarray,
    optimizer_state: Mapping[str, np.ndarray],
    digest: str | None = None,
) -> tuple[str, str | None]:
    """Model file (consortia safetensors) and, if any, the optimiser state next to it.

    Returns the sha256 of each file's bytes (None when the optimiser keeps no state).
    """
    model_sha = write_durably(path, model_chunks(spec, weights, digest))
    opt_sha = None
    if optimizer_state:
        arrays = {k: np.ascontiguousarray(v) for k, v in optimizer_state.items()}
        opt_sha = write_durably(optimizer_path(path), st_save(arrays))
    return model_sha, opt_sha


def _read_verified(path: Path, digest: str, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(
            f"{what} {path} is missing: the store records it, so it was deleted or moved"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot read {what} {path} ({exc.strerror})") from exc
    actual = sha256_hex(data)
    if actual != digest:
        raise StoreError(
            f"{what} {path} does not match the digest recorded in the store "
            f"({actual[:16]}... != {digest[:16]}...): it was modified or corrupted; "
            "refusing to resume from it"
        )
    return data


def read_checkpoint(
    path: Path, spec: ModelSpec, model_sha: str, opt_sha: str | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Load a checkpoint after checking both files against the digests in the store."""
    data = _read_verified(path, model_sha, "checkpoint")
    try:
        _, weights = model_from_bytes(data, expected=spec, origin=str(path))
    except ModelFileError as exc:
        raise StoreError(str(exc)) from exc
    state: dict[str, np.ndarray] = {}
    if opt_sha is not None:
        opt = _read_verified(optimizer_path(path), opt_sha, "optimiser state")
        state = {k: np.array(v) for k, v in st_load(opt).items()}
    return weights, state
