"""The deployment server's wiring, in-process over the debug fleet: run folder, store,
refusing to overwrite, resuming after a crash to the same model, refusing a bad resume."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import toy_app
from deploy_helpers import TOY_JOB

from consortia.client.runtime import Site
from consortia.client.trainers.numpy import FunctionTrainer
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.events import LoopState, RoundRecord
from consortia.core.serialize import load_model
from consortia.deployment import Deployment, DeployOptions, prepare_job
from consortia.fleet.base import Fleet
from consortia.fleet.debug import DebugFleet
from consortia.server.run import PreparedJob
from consortia.server.store import STORE_FILE, ServerStore, StoreError


def _fleet(sites: tuple[str, ...] = toy_app.SITES) -> Callable[[str], Fleet]:
    return lambda job_id: DebugFleet(list(sites), toy_app.make_site)


def _run(job: PreparedJob, out: Path, **kw: object) -> dict[str, object]:
    fleet = kw.pop("fleet", _fleet())
    return Deployment(job, DeployOptions(out=out, **kw), fleet).run()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def job() -> PreparedJob:
    return prepare_job(TOY_JOB)


@pytest.fixture(scope="module")
def reference(job: PreparedJob, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An uninterrupted run of the toy job (4 rounds, FedAvgM)."""
    return _run(job, tmp_path_factory.mktemp("ref"))


def test_a_run_leaves_a_complete_run_folder_and_store(
    reference: dict[str, object], job: PreparedJob
) -> None:
    out = Path(str(reference["run_dir"]))
    assert reference["status"] == "completed" and reference["rounds_completed"] == 4
    assert reference["site_names"] == list(toy_app.SITES)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["replies"] == 3 and "accuracy" in r for r in rows)  # central evaluation ran
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [
        f"round_000{i}{s}" for i in range(5) for s in (".optimizer.safetensors", ".safetensors")
    ]
    spec, _ = load_model(out / "model.safetensors")
    assert spec.digest() == job.spec.digest()
    assert (
        json.loads((out / "summary.json").read_text())["model_digest"] == reference["model_digest"]
    )
    assert (out / "job.toml").read_text() == TOY_JOB.read_text()
    assert list((out / "tensorboard").iterdir())
    with ServerStore(out / STORE_FILE) as s:
        assert s.job() is not None and s.job().status == "completed"  # type: ignore[union-attr]
        last = s.last_completed()
        assert last is not None and last.model_digest == reference["model_digest"]
        assert [p.outcome for p in s.participants(4)] == ["replied"] * 3


def test_an_existing_job_is_never_overwritten(
    reference: dict[str, object], job: PreparedJob
) -> None:
    out = Path(str(reference["run_dir"]))
    before = (out / STORE_FILE).read_bytes()
    with pytest.raises(StoreError, match=r"already holds job .*4 of 4 rounds.*--resume"):
        _run(job, out)
    assert (out / STORE_FILE).read_bytes() == before


class _Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_uninterrupted_model(
    job: PreparedJob, reference: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consortia.server.run import Run

    real = Run._commit

    def commit(self: Run, folder: Any, store: Any, record: RoundRecord, state: LoopState) -> None:
        real(self, folder, store, record, state)
        if state.round == 2:
            raise _Crash  # the process dies between the commit and anything after it

    monkeypatch.setattr(Run, "_commit", commit)
    with pytest.raises(_Crash):
        _run(job, tmp_path)
    monkeypatch.setattr(Run, "_commit", real)
    with ServerStore(tmp_path / STORE_FILE) as s:
        assert [r.number for r in s.completed_rounds()] == [1, 2]
    summary = _run(job, tmp_path, resume=True)
    assert summary["resumed_from_round"] == 2 and summary["rounds_completed"] == 4
    assert summary["model_digest"] == reference["model_digest"]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["round"] for r in rows] == [1, 2, 3, 4]


def test_resume_refuses_a_changed_job_file(
    job: PreparedJob, reference: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(Path(str(reference["run_dir"])), out)
    edited = tmp_path / "toy_job.toml"
    edited.write_text(TOY_JOB.read_text().replace("lr = 0.5", "lr = 0.25"))
    shutil.copy(TOY_JOB.parent / "toy_app.py", tmp_path / "toy_app.py")
    with pytest.raises(StoreError, match=r"job file .* changed since job"):
        _run(prepare_job(edited), out, resume=True)


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_resume_refuses_a_tampered_or_missing_checkpoint(
    job: PreparedJob, reference: dict[str, object], tmp_path: Path, damage: str
) -> None:
    out = tmp_path / "run"
    shutil.copytree(Path(str(reference["run_dir"])), out)
    ckpt = out / "checkpoints" / "round_0004.safetensors"
    if damage == "delete":
        ckpt.unlink()
        match = "round_0004.safetensors is missing"
    else:
        data = bytearray(ckpt.read_bytes())
        data[-2] ^= 0x40  # a weight's bit, the safetensors header still parses
        ckpt.write_bytes(bytes(data))
        match = "does not match the digest recorded in the store"
    with pytest.raises(StoreError, match=match):
        _run(job, out, resume=True, rounds=5)


def test_resume_needs_a_recorded_job(job: PreparedJob, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nothing to resume"):
        _run(job, tmp_path, resume=True)


def test_a_finished_job_can_be_extended_by_resuming_with_more_rounds(
    job: PreparedJob, reference: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(Path(str(reference["run_dir"])), out)
    summary = _run(job, out, resume=True, rounds=5)
    assert (summary["resumed_from_round"], summary["rounds_completed"]) == (4, 5)
    with pytest.raises(ConfigError, match="--rounds 3: the job already completed 5"):
        _run(job, out, resume=True, rounds=3)


def test_a_round_without_enough_replies_is_retried_then_the_server_stops(
    job: PreparedJob, tmp_path: Path
) -> None:
    def broken_fit(*args: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        raise RuntimeError("disk on fire")

    def make_site(name: str) -> Site:
        site = toy_app.make_site(name)
        if name != "site-a":  # two of three sites fail: min_replies = 2 is never met
            site.trainer = FunctionTrainer(toy_app.make_model, broken_fit, toy_app.evaluate)
        return site

    def fleet(job_id: str) -> Fleet:
        return DebugFleet(list(toy_app.SITES), make_site)

    with pytest.raises(RoundFailedError, match="round 1 fit: 1 replies, at least 2 needed"):
        _run(job, tmp_path, fleet=fleet, round_retries=1)
    with ServerStore(tmp_path / STORE_FILE) as s:
        assert s.failed_attempts()[0][:2] == (1, 2)
        parts = {p.site: (p.outcome, p.reason) for p in s.participants(1)}
        assert s.job().status == "failed"  # type: ignore[union-attr]
    assert parts["site-a"] == ("replied", None)
    assert parts["site-b"][0] == "failed" and "disk on fire" in str(parts["site-b"][1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 0


def test_min_sites_that_can_never_give_enough_replies_is_a_config_error(
    job: PreparedJob, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="min_replies: 2 replies can never arrive"):
        _run(job, tmp_path, min_sites=1)


def test_an_io_error_while_committing_fails_the_round_not_the_process(
    job: PreparedJob, reference: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding: with file descriptors exhausted the checkpoint write raised EMFILE and the
    server died. Now that round is dropped and tried again, and nothing half-done is kept."""
    import errno

    import consortia.server.run as run_module

    real = run_module.write_checkpoint
    calls = {"n": 0}

    def flaky(path: Path, *args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the initial checkpoint, round 1, then round 2 fails once
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, *args, **kw)

    monkeypatch.setattr(run_module, "write_checkpoint", flaky)
    summary = _run(job, tmp_path, round_retries=1)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4
    assert summary["model_digest"] == reference["model_digest"]  # the retry redid it exactly
    with ServerStore(tmp_path / STORE_FILE) as s:
        assert [r.number for r in s.completed_rounds()] == [1, 2, 3, 4]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
