"""The server's side of the ledger in whole simulated runs: a site's update signed with
the wrong key (or not at all) is refused and the refusal is an entry; a resumed job
continues the same chain; a run without the ledger keeps none."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia.simulation as simulation_module
from consortia.core.join import JoinStatement
from consortia.core.messages import FitRes, InvalidMessageError
from consortia.ledger.sign import LedgerKey, SiteSigner
from consortia.server.ledger_check import verify_run
from consortia.server.provenance import Provenance
from consortia.simulation import simulate

TOY_JOB = Path(__file__).parent.parent / "fixtures" / "toy_job.toml"


def _ledger(run: Path) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(run / "state.sqlite") as db:
        rows = db.execute("SELECT kind, payload FROM ledger ORDER BY idx").fetchall()
    return [(k, json.loads(p)) for k, p in rows]


class _Impostor(SiteSigner):
    """Announces one key (the server checks with it) and signs with another."""

    def __init__(self, announced: SiteSigner, actual: SiteSigner) -> None:
        self.__dict__.update(actual.__dict__)
        self.identity = announced.identity


def test_updates_signed_with_the_wrong_key_are_refused_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = simulation_module.simulation_keys

    def keys(run_dir: Path, ids: Any, resume: bool) -> dict[str, SiteSigner]:
        out = real(run_dir, ids, resume)
        out["site-0001"] = _Impostor(out["site-0001"], SiteSigner.generate())
        return out

    monkeypatch.setattr(simulation_module, "simulation_keys", keys)
    result = simulate(TOY_JOB, rounds=3, out=tmp_path / "run", debug=True)
    ledger = _ledger(tmp_path / "run")
    refused = [p for k, p in ledger if k == "update_refused"]
    assert refused and {p["site"] for p in refused} == {"site-0001"}
    assert all("signature does not verify" in p["reason"] and p["update_sha256"] for p in refused)
    received = {p["site"] for k, p in ledger if k == "update_received"}
    assert "site-0001" not in received and received
    assert result.summary["failing_sites"]["site-0001"]["failed"] == len(refused)
    assert verify_run(tmp_path / "run")[0].ok


def test_a_missing_signature_is_refused(tmp_path: Path) -> None:
    signer = SiteSigner.generate()
    prov = Provenance(LedgerKey.create(tmp_path), "job-1", lambda site: signer.identity)
    res = FitRes("a", 1, np.zeros(3, np.float32), 5, {})
    with pytest.raises(InvalidMessageError, match="has no signature"):
        prov.check_update("a", res, 1)
    from consortia.ledger.sign import update_digest, update_message

    good = signer.sign(update_message("job-1", 1, update_digest(res.delta)))
    prov.check_update("a", FitRes("a", 1, res.delta, 5, {}, signature=good), 1)
    with pytest.raises(InvalidMessageError, match="does not verify"):  # another round's
        prov.check_update("a", FitRes("a", 2, res.delta, 5, {}, signature=good), 2)
    with pytest.raises(InvalidMessageError, match="does not verify"):  # another job's
        other = Provenance(prov.key, "job-2", lambda site: signer.identity)
        other.check_update("a", FitRes("a", 1, res.delta, 5, {}, signature=good), 1)


def test_a_resumed_job_continues_the_same_chain(tmp_path: Path) -> None:
    out = tmp_path / "run"
    simulate(TOY_JOB, rounds=2, out=out)
    before = _ledger(out)
    simulate(TOY_JOB, rounds=3, out=out, resume=True)
    after = _ledger(out)
    assert after[: len(before)] == before
    assert after[len(before)] == ("job_resumed", {"after_round": 2})
    assert [p["round"] for k, p in after if k == "round_closed"] == [1, 2, 3]
    assert [k for k, _ in after].count("job_created") == 1
    report, _ = verify_run(out)
    assert report.ok, report.problem
    # The sites kept their keys: no site joined twice with another key.
    joined = [p["site"] for k, p in after if k == "site_joined"]
    assert len(joined) == len(set(joined))


def test_a_run_without_the_ledger_keeps_none(tmp_path: Path) -> None:
    out = tmp_path / "run"
    simulate(TOY_JOB, rounds=1, out=out, ledger=False)
    assert _ledger(out) == [] and not (out / "ledger.key").exists()
    report, _ = verify_run(out)
    assert report.problem is not None and "empty" in report.problem.what


def test_every_admitted_site_joins_the_ledger_whether_or_not_it_was_asked(
    tmp_path: Path,
) -> None:
    """A participant list drawn from site_joined entries (the compliance report's) must
    name the admitted sites, not the sampled ones: under DP who was sampled is private.
    Six sites, four asked in the one round: all six join, before any update is recorded."""
    simulate(TOY_JOB, rounds=1, out=tmp_path / "run", debug=True)
    ledger = _ledger(tmp_path / "run")
    asked = next(p["sites_asked"] for k, p in ledger if k == "round_opened")
    joined = [p["site"] for k, p in ledger if k == "site_joined"]
    assert asked == 4 and sorted(joined) == [f"site-{i:04d}" for i in range(6)]
    kinds = [k for k, _ in ledger]
    assert max(i for i, k in enumerate(kinds) if k == "site_joined") < kinds.index(
        "update_received"
    )
    assert verify_run(tmp_path / "run")[0].ok


def test_a_site_that_states_another_policy_joins_again_with_the_key_on_record(
    tmp_path: Path,
) -> None:
    """Its statement arrived after its entry, or it came back with another policy file:
    a new site_joined records it, with the key already recorded (a new key is recorded
    with the update it signed)."""
    signer = SiteSigner.generate()
    stated: dict[str, JoinStatement] = {}
    prov = Provenance(LedgerKey.create(tmp_path), "job-1", lambda site: signer.identity, stated.get)

    def joins(round_: int) -> list[dict[str, Any]]:
        return [p for k, p in prov.round_items(round_, [], [], ["a"]) if k == "site_joined"]

    (first,) = joins(1)
    assert (first["policy_sha256"], first["dua"]) == (None, None)
    stated["a"] = JoinStatement("cd" * 32, None)
    (second,) = joins(2)
    assert second == {**first, "policy_sha256": "cd" * 32}
    assert joins(3) == []
    del stated["a"]  # its latest join stated nothing it could check
    (third,) = joins(4)
    assert third == first
