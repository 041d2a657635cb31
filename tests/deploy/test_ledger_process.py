"""The ledger over a real deployment: ``consortia server`` and three ``consortia client``
processes over mutual TLS. Sites sign with their certificate's P-256 key; the ledger
verifies, and so does the run against each site's receipts. A site started with
``--policy`` is on record with its policy's digest and data-use agreement, and the
compliance report shows that agreement."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

from deploy_helpers import TOY_APP, TOY_JOB, Proc, client_args, free_port, query, server_args

from consortia.cli import main
from consortia.cli.client import load_policy
from consortia.monitor.report import make_report

POLICY = """
min_sites_per_round = 2

[data_use_agreement]
reference = "DUA-2025-017"
purpose = "toy model"
parties = ["hospital-a", "university-b"]
expires = 2099-06-30
"""

Spawn = Callable[..., Proc]


def test_a_deployment_leaves_a_ledger_that_verifies_with_every_receipt(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server", server_args(TOY_JOB, port, pki, out, "--rounds", "2", "--min-sites", "3")
    )
    sites = ("site-a", "site-b", "site-c")
    receipts = {s: tmp_path / f"{s}.receipts.jsonl" for s in sites}
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    for s in sites:
        extra = ["--policy", str(policy)] if s == "site-a" else []
        spawn(
            s,
            client_args(
                port, s, pki / "sites" / s, TOY_APP, "--receipts", str(receipts[s]), *extra
            ),
        )
    assert server.wait(60) == 0, server.output()
    joined = {
        j["site"]: j
        for j in (
            json.loads(p)
            for (p,) in query(out, "SELECT payload FROM ledger WHERE kind = 'site_joined'")
        )
    }
    assert sorted(joined) == list(sites)
    assert {j["key_type"] for j in joined.values()} == {"ecdsa-p256-sha256"}
    assert all(j["certificate_serial"] for j in joined.values())
    assert joined["site-a"]["policy_sha256"] == load_policy(policy).digest()
    assert joined["site-a"]["dua"] == {
        "reference": "DUA-2025-017",
        "purpose": "toy model",
        "parties": ["hospital-a", "university-b"],
        "expires": "2099-06-30",
    }
    for s in ("site-b", "site-c"):
        assert (joined[s]["policy_sha256"], joined[s]["dua"]) == (None, None)
    assert main(["audit", "verify", str(out)]) == 0
    agreements = make_report(out, today=dt.date(2099, 6, 30))["sections"]["agreements"]
    (recorded,) = agreements["recorded_in_ledger"]
    assert recorded["site"] == "site-a"
    assert recorded["agreement"]["reference"] == "DUA-2025-017"
    assert recorded["agreement"]["held_when_job_ended"] is True
    assert recorded["agreement"]["expired_on_report_date"] is False
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "DUA-2025-017" in page and joined["site-a"]["policy_sha256"] in page
    for s in sites:
        lines = receipts[s].read_text().splitlines()
        asked = query(
            out,
            "SELECT COUNT(*) FROM participants WHERE site = ? AND phase = 'fit' "
            "AND outcome = 'replied'",
            s,
        )[0][0]
        assert len(lines) == asked >= 1
        assert main(["audit", "verify", "--site", str(receipts[s]), str(out)]) == 0
