"""Site policies in simulation: the same rules as a deployed site, per virtual site
(``[simulation.site_policies.ID]``); refusals are counted in summary.json."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from consortia.cli import main
from consortia.client.policy import SitePolicy
from consortia.core.errors import ConfigError
from consortia.core.join import AgreementStatement, JoinRes
from consortia.core.policy_config import SitePolicyConfig, policy_digest
from consortia.monitor.report import make_report
from consortia.simulation import simulate

TOY = Path(__file__).parent / "deploy"

SIMULATION = """
[simulation]
sites = 7
fleet = "debug"

[simulation.site_policies.site-0000]
allowed_aggregators = ["krum"]

[simulation.site_policies.site-0001]
require_secure_aggregation = true

[simulation.site_policies.site-0002]
accepted_job_digests = ["{other}"]

[simulation.site_policies.site-0002.data_use_agreement]
reference = "DUA-3"
purpose = "toy"
parties = ["a", "b"]
expires = 2099-01-01

[simulation.site_policies.site-0003]
min_sites_per_round = 5

[simulation.site_policies.site-0004.data_use_agreement]
reference = "DUA-4"
purpose = "toy"
parties = ["a"]
expires = 2000-01-01
"""


def _job(tmp_path: Path, simulation: str) -> Path:
    shutil.copy(TOY / "toy_app.py", tmp_path / "toy_app.py")
    text = (TOY / "toy_job.toml").read_text().replace("fedavgm", "fedavg")
    text = text.replace("rounds = 4", "rounds = 2").replace("min_sites = 2", "min_sites = 1")
    text = text.replace("min_replies = 2", "min_replies = 1")
    job = tmp_path / "job.toml"
    job.write_text(text + simulation.replace("{other}", "cd" * 32))
    return job


def test_each_rule_refuses_its_site_in_simulation(tmp_path: Path):
    """Sites 0-4 each break one rule and never join; 5 and 6 have no policy and train."""
    result = simulate(_job(tmp_path, SIMULATION), out=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    refusals = summary["policy_refusals"]
    assert refusals == result.summary["policy_refusals"]
    join = refusals["join"]
    assert sorted(join) == [f"site-000{i}" for i in range(5)]
    assert "allowed_aggregators: " in join["site-0000"]
    assert "require_secure_aggregation: " in join["site-0001"]
    assert "accepted_job_digests: " in join["site-0002"]
    assert "min_sites_per_round: " in join["site-0003"]
    assert "data_use_agreement: " in join["site-0004"] and "DUA-4 expired" in join["site-0004"]
    assert (refusals["joins_refused"], refusals["rounds_refused"]) == (5, 0)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2


def test_a_site_policy_for_an_unknown_site_is_an_error(tmp_path: Path):
    sim = "[simulation]\nsites = 2\nfleet = 'debug'\n[simulation.site_policies.site-9]\n"
    with pytest.raises(ConfigError, match="site-9"):
        simulate(_job(tmp_path, sim), out=tmp_path / "run")


STATED = """
[simulation]
sites = 3
fleet = "pool"

[simulation.site_policy]
min_sites_per_round = 1

[simulation.site_policy.data_use_agreement]
reference = "DUA-2025-017"
purpose = "sepsis model"
parties = ["hospital-a", "uni-b"]
expires = 2099-06-30

[simulation.site_policies.site-0001]
min_sites_per_round = 1
delta = 1e-6

[simulation.site_policies.site-0002]
"""

POLICY_FILE = """
min_sites_per_round = 1

[data_use_agreement]
reference = "DUA-2025-017"
purpose = "sepsis model"
parties = ["hospital-a", "uni-b"]
expires = 2099-06-30
"""


def test_each_site_joined_entry_records_the_policy_the_site_stated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """site-0000 joins under the shared policy with its agreement, site-0001 under its own
    without one, site-0002 under an empty policy (which still has a digest). The digest is
    the one a deployed site's --policy file with the same rules gives (`consortia keys
    policy-digest`); the statements cross the pool's worker processes; the report shows
    the agreement."""
    simulate(_job(tmp_path, STATED), out=tmp_path / "run")
    run = tmp_path / "run"
    with sqlite3.connect(run / "state.sqlite") as db:
        rows = db.execute("SELECT payload FROM ledger WHERE kind = 'site_joined'").fetchall()
    joined = {p["site"]: p for p in (json.loads(r) for (r,) in rows)}
    assert sorted(joined) == ["site-0000", "site-0001", "site-0002"]
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY_FILE)
    assert main(["keys", "policy-digest", str(policy)]) == 0
    digest = capsys.readouterr().out.split()[0]
    assert joined["site-0000"]["policy_sha256"] == digest
    assert joined["site-0000"]["dua"] == {
        "reference": "DUA-2025-017",
        "purpose": "sepsis model",
        "parties": ["hospital-a", "uni-b"],
        "expires": "2099-06-30",
    }
    own = joined["site-0001"]
    assert own["dua"] is None and own["policy_sha256"] not in (None, digest)
    assert joined["site-0002"]["policy_sha256"] == policy_digest(SitePolicyConfig())
    assert joined["site-0002"]["dua"] is None
    assert main(["audit", "verify", str(run)]) == 0
    recorded = make_report(run, today=dt.date(2099, 7, 1))["sections"]["agreements"]
    (entry,) = [r for r in recorded["recorded_in_ledger"] if r["agreement"] is not None]
    assert entry["site"] == "site-0000" and entry["policy_sha256"] == digest
    assert entry["agreement"]["reference"] == "DUA-2025-017"
    assert entry["agreement"]["expired_on_report_date"] is True


def test_sites_without_a_policy_state_nothing(tmp_path: Path):
    simulate(_job(tmp_path, "[simulation]\nsites = 2\nfleet = 'debug'\n"), out=tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "state.sqlite") as db:
        rows = db.execute("SELECT payload FROM ledger WHERE kind = 'site_joined'").fetchall()
    joined = [json.loads(r) for (r,) in rows]
    assert len(joined) == 2
    assert all(j["policy_sha256"] is None and j["dua"] is None for j in joined)


def test_a_resumed_job_does_not_record_the_same_statements_again(tmp_path: Path):
    job = _job(tmp_path, STATED.replace('fleet = "pool"', 'fleet = "debug"'))
    simulate(job, rounds=1, out=tmp_path / "run")
    simulate(job, rounds=2, out=tmp_path / "run", resume=True)
    with sqlite3.connect(tmp_path / "run" / "state.sqlite") as db:
        rows = db.execute("SELECT payload FROM ledger WHERE kind = 'site_joined'").fetchall()
    assert sorted(json.loads(r)["site"] for (r,) in rows) == ["site-0000", "site-0001", "site-0002"]
    assert main(["audit", "verify", str(tmp_path / "run")]) == 0


def test_statements_that_do_not_check_out_are_dropped_and_the_ledger_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Sites that lie in their join reply (a digest that is not one, an agreement with a
    terminal escape, one far over the schema's limits): each joins stating nothing, with
    a logged reason, and the ledger and the report stay whole."""
    ok = AgreementStatement("DUA-1", "toy", "2099-01-01", {"0": "a"})
    lies = {
        "site-0000": JoinRes("site-0000", 0, "zz" * 32, ok),
        "site-0001": JoinRes(
            "site-0001", 0, "ab" * 32, AgreementStatement("\x1b[2J", "toy", "2099-01-01", {})
        ),
        "site-0002": JoinRes(
            "site-0002", 0, "ab" * 32, AgreementStatement("D", "p" * 100_000, "x", {"0": "a"})
        ),
    }
    monkeypatch.setattr(SitePolicy, "join_reply", lambda self, reply: lies[reply.site])
    simulate(_job(tmp_path, STATED.replace('"pool"', '"debug"')), out=tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "state.sqlite") as db:
        rows = db.execute("SELECT payload FROM ledger WHERE kind = 'site_joined'").fetchall()
    joined = [json.loads(r) for (r,) in rows]
    assert len(joined) == 3
    assert all(j["policy_sha256"] is None and j["dua"] is None for j in joined)
    dropped = [r.getMessage() for r in caplog.records if "statement is dropped" in r.getMessage()]
    assert len(dropped) == 3 and all(len(m) < 500 for m in dropped)
    assert main(["audit", "verify", str(tmp_path / "run")]) == 0
    assert make_report(tmp_path / "run")["sections"]["agreements"]["recorded_in_ledger"] == (
        "no site_joined entry records a policy digest or an agreement"
    )
