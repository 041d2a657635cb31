"""The secure aggregation benchmark (bench/secagg.py) in its quick mode: 5 sites, 1000
parameters, one plain and one secure run through the pool fleet. A test of the script's
measurements, not a timing: the figures live in docs/benchmarks.md."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import secagg  # noqa: E402  (bench/secagg.py)


def test_quick_bench_measures_both_modes_where_the_work_happens(tmp_path: Path) -> None:
    out = tmp_path / "secagg.json"
    assert secagg.main(["--quick", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["results"]["5:1000"]
    plain, secure = row["plain"], row["secure"]
    assert plain["round_s"] > 0 and secure["round_s"] > 0
    assert row["ratio"] == secure["round_s"] / plain["round_s"]
    # bytes per site: the plain update is 1000 float32; the masked input 1001 ring words
    # (the weight coordinate) of 4 bytes; the protocol's own kinds travel only when secure
    assert 4000 <= plain["sent_per_site"]["fit"] < 4000 + 200
    assert 4004 <= secure["sent_per_site"]["fit"] < 4004 + 200
    assert not any(k.startswith("secagg_") for k in plain["sent_per_site"])
    assert secure["sent_per_site"]["secagg_keys"] >= 64  # two X25519 public keys
    assert secure["received_per_site"]["fit"] > plain["received_per_site"]["fit"]  # bundles
    # site work measured inside the pool's workers, server work in the parent
    compute = secure["compute_per_round_s"]
    for label in ("keys", "shares", "encode+mask", "unmask answer", "fit handler"):
        assert compute[label] > 0, label
    for label in ("routing", "summing", "unmasking"):
        assert compute[label] > 0, label
    assert plain["compute_per_round_s"]["encode+mask"] == 0
    assert plain["compute_per_round_s"]["fit handler"] > 0
    assert secure["secure"][0]["masked_inputs"] == 5
