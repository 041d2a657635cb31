"""Secure aggregation over gRPC: ``consortia server`` and ``consortia client`` processes.

Each site's SecAgg+ state lives in its own process across a round's four phases (keys,
shares, masked input, unmask). A site SIGKILLed after its masked input left is still in
the sum (its self mask is removed with the others' shares); one killed while training is a
dropout whose pair masks the others' shares remove. Either way the round completes and the
model moves by the weighted mean of exactly the updates that were summed. Distributed DP
rides on the same ring, so the server's guarantee is the model readers' one; a site whose
policy requires secure aggregation joins such a job and refuses a plain one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import toy_app
from deploy_helpers import (
    DISTRIBUTED,
    HERE,
    TOY_APP,
    TOY_JOB,
    Proc,
    client_args,
    completed_rounds,
    free_port,
    query,
    server_args,
    wait_until,
)

from consortia.cli.client import REFUSED_EXIT_STATUS
from consortia.core.messages import FitIns, TrainSettings
from consortia.core.rng import derive_seed
from consortia.core.serialize import load_model

Spawn = Callable[..., Proc]

PACED_APP = f"{HERE / 'secagg_app.py'}:make_site"
# Three sites are the complete graph at k = 2 (the default k is derived for larger n);
# a clipping range the toy updates (|delta| < 3) never reach, so the secure mean is the
# plain one up to the fixed-point step.
SECAGG = "\n[secure_aggregation]\nneighbours = 2\nclip_range = 10.0\n"
LR, SEED = 0.5, 7  # toy_job.toml's [train] lr and seed


def _job(
    tmp_path: Path, rounds: int, extra: str = SECAGG, select: str = "fraction = 1.0\n"
) -> Path:
    """toy_job.toml with FedAvg (the server step is the mean itself), every connected
    site in each round (``select``), ``rounds`` rounds and ``extra`` appended."""
    shutil.copy(HERE / "toy_app.py", tmp_path / "toy_app.py")
    text = TOY_JOB.read_text()
    for old, new in (
        ("rounds = 4\n", f"rounds = {rounds}\n"),
        ('preset = "fedavgm"', 'preset = "fedavg"'),
        ("sites_per_round = 3\n", select),
    ):
        assert old in text, old
        text = text.replace(old, new)
    job = tmp_path / "job.toml"
    job.write_text(text + extra)
    return job


def _start_sites(
    spawn: Spawn, port: int, pki: Path, sites: tuple[str, ...], pace: str = "", *extra: str
) -> dict[str, Proc]:
    env = {"CONSORTIA_SECAGG_PACE": pace}
    return {
        s: spawn(s, client_args(port, s, pki / "sites" / s, PACED_APP, *extra), env) for s in sites
    }


def _wait_for_text(proc: Proc, text: str, server: Proc, timeout: float) -> None:
    """``proc`` printed ``text``; fails at once, with the server's log, if the server ended."""

    def seen() -> bool:
        if not server.alive():
            raise AssertionError(f"the server ended early:\n{server.tail()}")
        return text in proc.output()

    wait_until(seen, timeout, f"{text!r} in {proc.log.name}")


def _phases(out: Path, rnd: int) -> dict[tuple[str, str], tuple[str, str | None]]:
    rows = query(out, "SELECT site, phase, outcome, reason FROM participants WHERE round = ?", rnd)
    return {(site, phase): (outcome, reason) for site, phase, outcome, reason in rows}


def _secure_rounds(out: Path) -> list[dict[str, Any]]:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    per_round: list[dict[str, Any]] = summary["secure_aggregation"]["per_round"]
    return per_round


def _assert_moved_by_the_mean_of(out: Path, rnd: int, sites: tuple[str, ...]) -> None:
    """The round's model is the one before it plus the example-weighted mean of these
    sites' updates, recomputed here from the same seeds the server derives (toy_app's
    training is deterministic given the seed)."""
    _, before = load_model(out / "checkpoints" / f"round_{rnd - 1:04d}.safetensors")
    _, after = load_model(out / "checkpoints" / f"round_{rnd:04d}.safetensors")
    replies = [
        toy_app.make_site(s).on_fit(
            FitIns(rnd, before, TrainSettings(lr=LR), derive_seed(SEED, "fit", rnd, s))
        )
        for s in sites
    ]
    total = sum(r.num_examples for r in replies)
    mean = sum(r.delta.astype(np.float64) * r.num_examples for r in replies) / total
    assert np.abs(mean).max() > 0.01  # a round that moved nothing would prove nothing
    # The fixed-point step is ~1e-8 at 32 bits, 3 sites and clip 10: float32 dominates.
    np.testing.assert_allclose(after, before + mean, rtol=0, atol=2e-5)


def test_a_site_killed_after_its_masked_input_left_is_in_the_sum_of_the_completed_round(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server", server_args(_job(tmp_path, rounds=2), port, pki, out, "--min-sites", "3")
    )
    # Round 2: site-a and site-b train 4 s; site-c replies at once and is killed then.
    sites = _start_sites(spawn, port, pki, toy_app.SITES, "site-a@2=4,site-b@2=4")
    victim = sites["site-c"]
    _wait_for_text(victim, "round 2 fit: reply sent", server, 30)
    time.sleep(1.0)  # "reply sent" is the reply queued on the stream: let it leave
    victim.popen.kill()
    victim.popen.wait(5)
    assert completed_rounds(out) == 1  # the others were still training
    assert "round 2 secagg_unmask" not in victim.output()
    assert server.wait(40) == 0, server.output()
    per_round = _secure_rounds(out)
    assert [(r["round"], r["masked_inputs"], r["dropouts_recovered"]) for r in per_round] == [
        (1, 3, 0),
        (2, 3, 0),
    ]
    assert all(r["individual_updates_unmasked"] == 0 for r in per_round)
    phases = _phases(out, 2)
    assert phases[("site-c", "fit")] == ("replied", None)
    assert phases[("site-c", "secagg_unmask")] == ("failed", "not connected")
    assert {phases[(s, "secagg_unmask")] for s in ("site-a", "site-b")} == {("replied", None)}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["replies"], r["failures"]) for r in rows] == [(1, 3, 0), (2, 3, 1)]
    # site-c's update is in round 2's sum: the model moved by the mean of all three.
    _assert_moved_by_the_mean_of(out, 1, toy_app.SITES)
    _assert_moved_by_the_mean_of(out, 2, toy_app.SITES)
    assert [sites[s].wait(15) for s in ("site-a", "site-b")] == [0, 0]


def test_a_site_killed_while_training_is_a_dropout_the_others_shares_recover(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    """Four sites (three must send masked inputs: two would each learn the other's update
    from the sum): site-c dies in round 2 before masking; its pair masks, already in the
    others' inputs, are removed with its mask key rebuilt from their shares. Restarted,
    a new process with no protocol state, it takes part in round 3 again."""
    port, out = free_port(), tmp_path / "run"
    server = spawn(
        "server", server_args(_job(tmp_path, rounds=3), port, pki, out, "--min-sites", "4")
    )
    everyone = (*toy_app.SITES, "hospital-a")
    sites = _start_sites(spawn, port, pki, everyone, "site-c@2=60")
    victim = sites["site-c"]
    _wait_for_text(victim, "round 2 fit: working", server, 30)
    victim.popen.kill()
    victim.popen.wait(5)
    wait_until(lambda: completed_rounds(out) >= 2, 30, "round 2 to complete without site-c")
    spawn("site-c-again", client_args(port, "site-c", pki / "sites" / "site-c", PACED_APP))
    assert server.wait(40) == 0, server.output()
    per_round = _secure_rounds(out)
    assert [(r["round"], r["masked_inputs"], r["dropouts_recovered"]) for r in per_round] == [
        (1, 4, 0),
        (2, 3, 1),
        (3, 4, 0),
    ]
    assert all(r["individual_updates_unmasked"] == 0 for r in per_round)
    phases = _phases(out, 2)
    assert phases[("site-c", "secagg_shares")] == ("replied", None)
    outcome, reason = phases[("site-c", "fit")]
    assert outcome == "failed" and str(reason).startswith("disconnected"), reason
    assert ("site-c", "secagg_unmask") not in phases  # a dropout is not asked to unmask
    survivors = ("site-a", "site-b", "hospital-a")
    assert {phases[(s, "secagg_unmask")] for s in survivors} == {("replied", None)}
    _assert_moved_by_the_mean_of(out, 1, everyone)
    _assert_moved_by_the_mean_of(out, 2, survivors)
    _assert_moved_by_the_mean_of(out, 3, everyone)
    assert [sites[s].wait(15) for s in survivors] == [0, 0, 0]


def test_distributed_dp_under_secure_aggregation_guarantees_the_server_what_readers_get(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    """The noise shares reach the server only summed, so its view is the model readers'
    view: no ``allow_without_secure_aggregation`` needed, one guarantee for both."""
    job = _job(tmp_path, rounds=2, extra=DISTRIBUTED + SECAGG, select="")
    assert "allow_without_secure_aggregation" not in job.read_text()
    port, out = free_port(), tmp_path / "run"
    server = spawn("server", server_args(job, port, pki, out, "--min-sites", "3"))
    sites = _start_sites(spawn, port, pki, toy_app.SITES)
    assert server.wait(40) == 0, server.output()
    assert [(r["masked_inputs"], r["dropouts_recovered"]) for r in _secure_rounds(out)] == [
        (3, 0),
        (3, 0),
    ]
    report = json.loads((out / "privacy.json").read_text())
    readers = report["guarantees"]["against_readers_of_the_model"]
    server_view = report["guarantees"]["against_the_server"]
    assert server_view["secure_aggregation"] is True
    for key in ("epsilon", "delta", "unit"):
        assert server_view[key] == readers[key], key
    # Both are the sum's: two rounds at rho = 1 / (2 z^2), every site's noise share in it
    # (without secure aggregation the server's figure is per encoding, and larger).
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(1 / (2 * 2.0**2)), 2)
    assert server_view["epsilon"]["rdp"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert report["secure_aggregation"]["per_round"][-1]["individual_updates_unmasked"] == 0
    _, start = load_model(out / "checkpoints" / "round_0000.safetensors")
    _, end = load_model(out / "model.safetensors")
    assert np.isfinite(end).all() and not np.array_equal(start, end)
    assert [sites[s].wait(15) for s in toy_app.SITES] == [0, 0, 0]


def test_a_site_requiring_secure_aggregation_joins_such_a_job_and_refuses_a_plain_one(
    pki: Path, spawn: Spawn, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("require_secure_aggregation = true\n")
    secure_dir, plain_dir = tmp_path / "secure", tmp_path / "plain"
    secure_dir.mkdir()
    plain_dir.mkdir()
    secure_job, plain_job = _job(secure_dir, rounds=1), _job(plain_dir, rounds=1, extra="")
    # Both jobs at once, each on its own port; the plain job's other sites come once
    # site-a has refused it (else a quick job could end before site-a is welcomed).
    runs = {}
    for name, job, minimum in (("secure", secure_job, "3"), ("plain", plain_job, "2")):
        port, out = free_port(), tmp_path / f"{name}-run"
        server = spawn(f"{name}-server", server_args(job, port, pki, out, "--min-sites", minimum))
        strict = spawn(
            f"{name}-site-a",
            client_args(port, "site-a", pki / "sites" / "site-a", TOY_APP, "--policy", str(policy)),
        )
        runs[name] = (port, server, out, strict)
    port, server, out, strict = runs["secure"]
    _start_sites(spawn, port, pki, ("site-b", "site-c"))
    port, _, _, refusing = runs["plain"]
    assert refusing.wait(30) == REFUSED_EXIT_STATUS, refusing.output()
    assert "refused the job and left: site policy: require_secure_aggregation: " in (
        refusing.output()
    )
    _start_sites(spawn, port, pki, ("site-b", "site-c"))
    assert server.wait(40) == 0, server.output()
    assert strict.wait(15) == 0, strict.output()
    assert "require_secure_aggregation=True" in strict.output()
    phases = _phases(out, 1)
    for phase in ("secagg_keys", "secagg_shares", "fit", "secagg_unmask"):
        assert phases[("site-a", phase)] == ("replied", None), phase
    assert _secure_rounds(out)[0]["masked_inputs"] == 3
    _, server, out, _ = runs["plain"]
    assert server.wait(40) == 0, server.output()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and "secure_aggregation" not in summary
    refusal = summary["policy_refusals"]["join"]["site-a"]
    assert refusal.startswith("site policy: require_secure_aggregation: "), refusal
    assert {s for s, _ in _phases(out, 1)} == {"site-b", "site-c"}
