"""Site policies in simulation: the same rules as a deployed site, per virtual site
(``[simulation.site_policies.ID]``); refusals are counted in summary.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from consortia.core.errors import ConfigError
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
