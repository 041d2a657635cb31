"""The fuzz benchmark (bench/_chaos_fuzz.py) in its quick form: a few hundred hostile
messages from every kind of peer against a live server while three honest sites run a
job; nothing crashes, nothing stored changes, the honest sites finish with the digest of
the run without fuzzing. The full run (10,000 messages) is the benchmark's, not a test's."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _chaos_fuzz  # noqa: E402  (bench/_chaos_fuzz.py)
from _fuzz_plan import SHARES  # noqa: E402


def test_quick_fuzz_leaves_the_server_up_its_store_unchanged_and_the_sites_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fuzz.json"
    assert _chaos_fuzz.main(["--quick", "--json", str(out)]) == 0, capsys.readouterr().out
    f = json.loads(out.read_text())
    assert f["messages"] == 300
    assert set(f["sent_by_peer"]) == set(SHARES)  # every kind of peer sent
    assert all(n > 0 for n in f["sent_by_peer"].values()), f["sent_by_peer"]
    assert f["server_crashes"] == 0 and f["server_exit"] == 0
    assert f["store_changes"] == 0, f["store_diffs"]
    assert f["honest_sites_finished"] and f["final_digest"] == f["reference_digest"]
    assert f["welcomed_hostile_peers"] == 0 and f["raw_held_past_handshake"] == 0
    # every hostile message on the live stream was refused with a logged reason ...
    assert f["refusals_logged_site_stream"] == f["refusals_expected_site_stream"] > 0
    # ... every hostile first message of a new stream too, and every peer saw its refusal
    firsts = f["sent_by_peer"]["new stream, mallory's cert"]
    firsts += f["sent_by_peer"]["new stream, honest certs"]
    assert f["refusals_logged_connections"] == firsts
    assert sum(f["connection_refusals"].values()) == sum(
        n for k, n in f["sent_by_peer"].items() if not k.startswith("site stream")
    )
