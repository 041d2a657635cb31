"""verify_entries on hand-made ledgers: site signatures (serial and parallel), unsigned
updates, and a payload that lies about its site's key."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortia.ledger import kinds as K
from consortia.ledger.chain import SCHEMA, LedgerError, append, canonical_json, read_entries
from consortia.ledger.sign import LedgerKey, SiteSigner, update_message
from consortia.ledger.verify import verify_entries


def _ledger(tmp: Path, updates: list[tuple[str, SiteSigner | None, str]]) -> list[Any]:
    """job_created, one site_joined per signer, then one update each (site, signer, sig)."""
    tmp.mkdir(parents=True, exist_ok=True)
    key = LedgerKey.create(tmp)
    db = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in SCHEMA:
        db.execute(stmt)
    items: list[tuple[str, dict[str, Any]]] = [
        (K.JOB_CREATED, {"job_id": "j", "ledger_public_key": key.public})
    ]
    seen: set[str] = set()
    for i, (site, signer, sig) in enumerate(updates):
        if site not in seen:
            seen.add(site)
            who = signer.identity.to_json() if signer else {"key_type": "none", "public_key": ""}
            items.append((K.SITE_JOINED, {"site": site, "certificate_serial": None, **who}))
        digest = f"{i:064x}"
        if sig == "good" and signer is not None:
            sig = signer.sign(update_message("j", 1, digest))
        items.append(
            (
                K.UPDATE_RECEIVED,
                {"round": 1, "site": site, "update_sha256": digest, "signature": sig},
            )
        )
    append(db, key.sign, items)
    return read_entries(db)


def test_each_update_is_checked_against_its_sites_key(tmp_path: Path) -> None:
    a, b = SiteSigner.generate(), SiteSigner.generate()
    good = _ledger(tmp_path / "1", [("a", a, "good"), ("b", b, "good"), ("a", a, "good")])
    report = verify_entries(good)
    assert report.ok and report.site_signatures == 3
    forged = b.sign(update_message("j", 1, f"{1:064x}"))  # b's signature, a's name
    bad = _ledger(tmp_path / "2", [("b", b, "good"), ("a", a, forged), ("a", a, "good")])
    report = verify_entries(bad)
    assert report.problem is not None and report.problem.kind == K.UPDATE_RECEIVED
    assert "'a'" in report.problem.what and bad[report.problem.index].data()["site"] == "a"


def test_unsigned_updates_of_an_insecure_run_are_counted_not_failed(tmp_path: Path) -> None:
    report = verify_entries(_ledger(tmp_path, [("a", None, ""), ("a", None, "")]))
    assert report.ok and report.unsigned_updates == 2 and report.site_signatures == 0


def test_the_parallel_check_finds_the_same_first_problem(tmp_path: Path) -> None:
    """Slices checked in forked processes report what one pass in order reports: the
    first bad signature, and a broken link after it does not hide an earlier one."""
    s = SiteSigner.generate()
    updates: list[tuple[str, SiteSigner | None, str]] = [("a", s, "good")] * 40
    good = _ledger(tmp_path / "good", updates)
    for workers in (1, 2, 3):
        report = verify_entries(good, workers=workers, parallel_from=1)
        assert report.ok and report.site_signatures == 40
    bad_sig = s.sign(b"something else")
    tampered = list(updates)
    tampered[29] = tampered[17] = ("a", s, bad_sig)
    bad = _ledger(tmp_path / "bad", tampered)
    serial = verify_entries(bad, workers=1)
    assert serial.problem is not None and serial.problem.index == 2 + 17
    for workers in (2, 3):
        parallel = verify_entries(bad, workers=workers, parallel_from=1)
        assert parallel.problem == serial.problem
    # An entry moved late in the ledger: the first bad update still comes first.
    moved = [*bad[:35], bad[36], bad[35], *bad[37:]]
    for workers in (1, 2):
        report = verify_entries(moved, workers=workers, parallel_from=1)
        assert report.problem is not None and report.problem.index == 19


@given(
    job=st.text(max_size=40),
    round_=st.integers(-(2**53), 2**53),
    digest=st.text(max_size=70),
)
def test_the_signed_message_is_the_canonical_json_of_its_fields(
    job: str, round_: int, digest: str
) -> None:
    obj = {"job": job, "round": round_, "update_sha256": digest}
    assert update_message(job, round_, digest) == canonical_json(obj).encode()


def test_a_round_beyond_json_integers_is_refused() -> None:
    with pytest.raises(LedgerError, match="beyond"):
        update_message("j", 2**53 + 1, "d")
