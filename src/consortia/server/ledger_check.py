"""A run folder's ledger, checked: the entries, the checkpoint files they name, what the
store says happened, and (optionally) one site's receipts. Used by ``consortia audit``.

Opens the store read-only: verifying never changes the run folder.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from consortia.core.serialize import model_from_bytes
from consortia.core.spec import model_digest
from consortia.ledger import kinds as K
from consortia.ledger.chain import Entry, LedgerError, read_entries
from consortia.ledger.receipts import ReceiptBook, check_run_against
from consortia.ledger.sign import read_public_file
from consortia.ledger.verify import Problem, VerifyReport, verify_entries
from consortia.server.store import STORE_FILE

FINAL = ("completed", "failed", "budget_exhausted")


@dataclass(frozen=True)
class StoreFacts:
    """What the server's other tables say happened: the ledger must agree."""

    job_id: str | None
    status: str | None
    completed_rounds: tuple[int, ...]


def load(run_dir: Path) -> tuple[list[Entry], StoreFacts]:
    path = Path(run_dir) / STORE_FILE
    if not path.is_file():
        raise LedgerError(f"{run_dir}: no {STORE_FILE} here; is it a run folder?")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: cannot open ({exc})") from exc
    try:
        entries = read_entries(db)
        job = db.execute("SELECT id, status FROM job").fetchone()
        rounds = db.execute("SELECT number FROM rounds WHERE status = 'completed'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: not a consortia state file ({exc})") from exc
    finally:
        db.close()
    facts = StoreFacts(
        None if job is None else str(job[0]),
        None if job is None else str(job[1]),
        tuple(sorted(int(r[0]) for r in rounds)),
    )
    return entries, facts


def _agrees(facts: StoreFacts) -> Callable[[Sequence[Entry]], Problem | None]:
    def check(entries: Sequence[Entry]) -> Problem | None:
        closed = {e.data().get("round") for e in entries if e.kind == K.ROUND_CLOSED}
        end = len(entries)
        for r in facts.completed_rounds:
            if r not in closed:
                return Problem(
                    end,
                    None,
                    f"the store has round {r} completed, the ledger never closed it "
                    "(entries were cut off the end)",
                )
        if facts.status in FINAL and entries[-1].kind != K.JOB_FINISHED:
            return Problem(
                end,
                None,
                f"the store says the job ended ({facts.status}); the ledger has no "
                "job_finished (entries were cut off the end)",
            )
        return None

    return check


def _reader(run_dir: Path) -> Callable[[str], bytes | None]:
    root = Path(run_dir).resolve()

    def read(rel: str) -> bytes | None:
        path = (root / rel).resolve()
        if root not in path.parents:
            return None  # a path out of the run folder is never read
        try:
            return path.read_bytes()
        except OSError:
            return None

    return read


def _model_digest(data: bytes) -> str:
    spec, weights = model_from_bytes(data)
    return model_digest(spec, weights)


def verify_run(run_dir: Path, receipts: Path | None = None) -> tuple[VerifyReport, int | None]:
    """The ledger's report, and how many receipts were checked (None: no receipts given).
    A problem found by the receipts (an entry dropped or altered) is the report's problem
    when the chain alone found none."""
    entries, facts = load(run_dir)
    report = verify_entries(
        entries,
        public_key=read_public_file(Path(run_dir)),
        read_file=_reader(run_dir),
        model_digest=_model_digest,
        expected=_agrees(facts),
    )
    if receipts is None:
        return report, None
    book = ReceiptBook(receipts).read()
    if not book:
        raise LedgerError(f"{receipts}: no receipts in this file")
    job = facts.job_id or ""
    if not any(r.get("job") == job for r in book):
        raise LedgerError(f"{receipts}: no receipt is for job {job!r} (this run's)")
    checked, problem = check_run_against(book, entries, job)
    if problem is not None and (report.problem is None or problem.index < report.problem.index):
        report.problem = problem
    return report, checked
