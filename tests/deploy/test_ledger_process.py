"""The ledger over a real deployment: ``consortia server`` and three ``consortia client``
processes over mutual TLS. Sites sign with their certificate's P-256 key; the ledger
verifies, and so does the run against each site's receipts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from deploy_helpers import TOY_APP, TOY_JOB, Proc, client_args, free_port, query, server_args

from consortia.cli import main

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
    for s in sites:
        spawn(s, client_args(port, s, pki / "sites" / s, TOY_APP, "--receipts", str(receipts[s])))
    assert server.wait(60) == 0, server.output()
    joined = [
        json.loads(p)
        for (p,) in query(out, "SELECT payload FROM ledger WHERE kind = 'site_joined'")
    ]
    assert sorted(j["site"] for j in joined) == list(sites)
    assert {j["key_type"] for j in joined} == {"ecdsa-p256-sha256"}
    assert all(j["certificate_serial"] for j in joined)
    assert main(["audit", "verify", str(out)]) == 0
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
