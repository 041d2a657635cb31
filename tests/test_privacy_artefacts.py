"""Published artefacts of DP runs reveal neither who took part nor how many (issue 9)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from consortia.core.config import parse_job
from consortia.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
SITE_ID = re.compile(r"site-\d{4}")
# Keys that carry a round's participants or their number, or a site's participation.
PARTICIPATION = {
    "sites",
    "replies",
    "failures",
    "failed_sites",
    "failing_sites",
    "worst_site",
    "flagged_sites",
    "audit_flagged",
    "rounds_participated",
    "per_site",
}
PRIVACY = {
    "central": {"mode": "central", "sample_rate": 0.5, "clip_norm": 1.0, "noise_multiplier": 1.0},
    "distributed": {
        "mode": "distributed",
        "sample_rate": 0.9,
        "clip_norm": 5.0,
        "noise_multiplier": 0.5,
        "min_sites": 2,
    },
    "local": {"mode": "local", "local_noise_multiplier": 1.0},
}


def _job(tmp_path: Path, mode: str):
    app = "torch_toy_app.py" if mode == "local" else "toy_app.py"
    shutil.copy(ROOT / "tests" / "fixtures" / app, tmp_path / app)
    task = (
        {"framework": "torch", "app": app}
        if mode == "local"
        else {"framework": "numpy", "app": app}
    )
    return parse_job(
        {
            "rounds": 2,
            "task": task,
            "train": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
            "strategy": {"sites_per_round": 3} if mode == "local" else {},
            "privacy": {"seeded_noise": True, **PRIVACY[mode]},
            "simulation": {"sites": 6, "partition": {"method": "iid"}},
        }
    )


def _keys(value) -> set[str]:
    """Every key of every mapping nested in ``value``."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@pytest.fixture(scope="module", params=["central", "distributed", "local"])
def run(request, tmp_path_factory) -> tuple[str, Path]:
    """One small DP run per mode (two rounds, six sites), shared by this module's tests."""
    mode = request.param
    tmp_path = tmp_path_factory.mktemp(mode)
    out = tmp_path / "run"
    simulate(_job(tmp_path, mode), out=out, base_dir=tmp_path, debug=True)
    return mode, out


def test_dp_artefacts_name_no_participant_and_count_none(run: tuple[str, Path]) -> None:
    """Finding 8 (issue 9): privacy.json, metrics.jsonl, summary.json and TensorBoard of a
    central, a distributed and a local run hold no per-round participant count and no
    per-site participation list; each site's report holds its own participation only."""
    mode, out = run
    assert (out / "site_reports").is_dir(), mode
    privacy = json.loads((out / "privacy.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 2
    for name, artefact in (("privacy.json", privacy), ("metrics.jsonl", rows)):
        assert not _keys(artefact) & PARTICIPATION, name
        assert not SITE_ID.search(json.dumps(artefact)), name
    # summary.json states the federation's size N (public, as in privacy.json), nothing else.
    assert not _keys(summary) & (PARTICIPATION - {"sites"})
    assert summary["sites"] == 6 and not SITE_ID.search(json.dumps(summary))
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").rglob("*") if p.is_file())
    assert events and b"epsilon" in events  # the scalars are there, participation is not
    for tag in (b"replies", b"sites", b"failures", b"site-0"):
        assert tag not in events, tag
    # The operator's audit record keeps it all; each site gets its own figures only.
    reports = {p.stem: json.loads(p.read_text()) for p in (out / "site_reports").glob("*.json")}
    assert reports
    for site, report in reports.items():
        assert report["site"] == site
        assert set(SITE_ID.findall(json.dumps(report))) == {site}


def test_privacy_json_states_each_modes_neighbouring_relation(run: tuple[str, Path]) -> None:
    """Finding 9 (issue 9): the relation each guarantee holds for is the one its analysis
    proves: add/remove of a site for DP-FedAvg with Poisson sampling, zero-out of a site for
    the distributed discrete Gaussian (Kairouz et al. 2021, Theorem 1), add/remove of one
    example for DP-SGD with Poisson batches."""
    mode, out = run
    stated = json.loads((out / "privacy.json").read_text())["neighbouring"]
    expected = {
        "central": "add/remove one site",
        "distributed": "zero-out: one site's contribution replaced by zero",
        "local": "add/remove one example",
    }
    assert stated.startswith(expected[mode])
    assert ("Theorem 1" in stated) == (mode == "distributed")
    assert ("Poisson" in stated) == (mode != "distributed")


def test_privacy_json_states_against_whom_each_mode_holds(run: tuple[str, Path]) -> None:
    """The compliance report quotes privacy.json's threat model: central DP does not hold
    against the server that adds the noise; local DP does; distributed DP without secure
    aggregation holds against the server only at its weaker figure."""
    mode, out = run
    threat = json.loads((out / "privacy.json").read_text())["threat_model"]
    assert threat["holds_against"] and all(isinstance(s, str) for s in threat["holds_against"])
    against_server = [s for s in threat["holds_against"] if s.startswith("the server")]
    not_against = " ".join(threat["does_not_hold_against"])
    if mode == "central":
        assert not against_server and not_against.startswith("the server")
    elif mode == "distributed":
        assert "against_the_server" in against_server[0] and "collude" in not_against
    else:
        assert against_server and not threat["does_not_hold_against"]


def test_under_dp_the_summary_keeps_join_refusals_but_no_round_refusals_per_site() -> None:
    """A site that refused a round was sampled for it: under DP summary.json must not
    publish per-site (or total) round refusals. Refusals to join come before sampling."""
    from consortia.server.run import hide_participation, policy_refusals

    summary = {
        "policy_refusals": policy_refusals({"site-0003": "site policy: expired"}, []),
        "failures": 2,
    }
    summary["policy_refusals"]["rounds"] = {"site-0001": 2}
    summary["policy_refusals"]["rounds_refused"] = 2
    hide_participation(summary)
    assert summary == {
        "policy_refusals": {"joins_refused": 1, "join": {"site-0003": "site policy: expired"}}
    }
