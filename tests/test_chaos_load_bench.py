"""The chaos benchmark's load part (bench/_chaos_load.py) in its quick mode: one generator
process holding 20 mutual-TLS sites, each with its own certificate, speaks the real
protocol well enough that a real ``consortia server`` runs its rounds across all of them.
A test of the script, not a timing: the figures live in docs/benchmarks.md."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import chaos  # noqa: E402  (bench/chaos.py)


def test_quick_load_runs_every_round_across_all_sites_with_no_refusal(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    assert chaos.main(["load", "--quick", "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert row["sites"] == 20 and row["rounds_completed"] == row["rounds"] == 2
    assert row["connection_refusals"] == 0 and row["refusal_lines_in_server_log"] == 0
    assert row["all_connected_s"] is not None and row["server_rss_peak_mib"] > 0
