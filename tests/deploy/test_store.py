"""The server's SQLite store and its checkpoint files: one transaction per round, rounds in
order, digests that catch any change to a checkpoint."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from consortia.core.spec import ModelSpec, model_digest
from consortia.server.store import (
    JobRow,
    Participant,
    RoundRow,
    ServerStore,
    StoreError,
    read_checkpoint,
    sha256_hex,
    write_checkpoint,
)

SPEC = ModelSpec.from_arrays({"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)})
JOB = JobRow("toy-1", "toy", "a" * 64, SPEC.digest(), 3, "c/0.st", "d" * 64, None, "running")


def _row(n: int) -> RoundRow:
    return RoundRow(n, 0.5, {"round": n, "accuracy": 0.25 * n}, f"c/{n}.st", "e" * 64, None, "f")


def test_a_round_and_its_participants_commit_together_and_read_back(tmp_path: Path) -> None:
    with ServerStore(tmp_path / "s.sqlite") as s:
        s.create_job(JOB)
        s.commit_round(
            _row(1),
            [Participant("b", "fit", "replied"), Participant("a", "fit", "failed", "timeout")],
        )
    with ServerStore(tmp_path / "s.sqlite") as s:  # reopened: it was on disk
        assert s.job() == JOB
        (r,) = s.completed_rounds()
        assert (r.number, r.metrics) == (1, {"round": 1, "accuracy": 0.25})
        assert s.participants(1) == [
            Participant("a", "fit", "failed", "timeout"),
            Participant("b", "fit", "replied", None),
        ]
        mode = s._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_rounds_complete_in_order_exactly_once(tmp_path: Path) -> None:
    with ServerStore(tmp_path / "s.sqlite") as s:
        s.create_job(JOB)
        with pytest.raises(StoreError, match="round 2 cannot follow round 0"):
            s.commit_round(_row(2), [])
        s.commit_round(_row(1), [])
        with pytest.raises(StoreError, match="round 1 is already recorded as completed"):
            s.commit_round(_row(1), [])
        with pytest.raises(StoreError, match="never overwritten"):
            s.create_job(JOB)
        assert [r.number for r in s.completed_rounds()] == [1]


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    with ServerStore(tmp_path / "s.sqlite") as s:
        s.create_job(JOB)
        before = s.dump()
        bad = [Participant("a", "fit", "replied"), Participant("b", "fit", "exploded")]
        with pytest.raises(sqlite3.IntegrityError):  # CHECK on outcome, after the round row
            s.commit_round(_row(1), bad)
        assert s.dump() == before  # neither the round nor the first participant stayed


def test_failed_attempts_are_kept_until_the_round_completes(tmp_path: Path) -> None:
    with ServerStore(tmp_path / "s.sqlite") as s:
        s.create_job(JOB)
        s.record_failed_attempt(1, "1 replies, at least 2 needed", [])
        s.record_failed_attempt(1, "again", [Participant("a", "fit", "failed", "gone")])
        assert s.failed_attempts() == [(1, 2, "again")]
        assert s.last_completed() is None
        s.commit_round(_row(1), [Participant("a", "fit", "replied")])
        assert s.failed_attempts() == []
        assert s._db.execute("SELECT attempts FROM rounds").fetchone() == (3,)
        assert s.participants(1) == [Participant("a", "fit", "replied", None)]


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.sqlite"
    p.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable consortia state file"):
        ServerStore(p)


def test_checkpoint_round_trip_and_every_kind_of_damage_is_caught(tmp_path: Path) -> None:
    w = np.arange(7, dtype=np.float32)
    m = {"m": np.linspace(0, 1, 7, dtype=np.float32)}
    path = tmp_path / "round_0001.safetensors"
    sha, opt_sha = write_checkpoint(path, SPEC, w, m)
    assert sha == sha256_hex(path.read_bytes())
    assert opt_sha is not None and not list(tmp_path.glob("*.tmp"))
    w2, m2 = read_checkpoint(path, SPEC, sha, opt_sha)
    np.testing.assert_array_equal(w2, w)
    np.testing.assert_array_equal(m2["m"], m["m"])
    assert model_digest(SPEC, w2) == model_digest(SPEC, w)

    opt_file = tmp_path / "round_0001.optimizer.safetensors"
    data = bytearray(opt_file.read_bytes())
    data[-1] ^= 1  # one bit of the optimiser state
    opt_file.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"optimiser state .* does not match the digest"):
        read_checkpoint(path, SPEC, sha, opt_sha)
    path.unlink()
    with pytest.raises(StoreError, match="is missing"):
        read_checkpoint(path, SPEC, sha, opt_sha)


def test_stateless_optimiser_writes_one_file(tmp_path: Path) -> None:
    sha, opt_sha = write_checkpoint(tmp_path / "r.safetensors", SPEC, np.ones(7, np.float32), {})
    assert opt_sha is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors"]
    w, state = read_checkpoint(tmp_path / "r.safetensors", SPEC, sha, None)
    assert state == {} and w.sum() == 7
