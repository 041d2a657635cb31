"""End-to-end simulations: the run folder, the CLI, determinism across fleets, failures."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from consortia import load_model
from consortia.cli import main
from consortia.core.config import load_job, parse_job
from consortia.core.errors import RoundFailedError
from consortia.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits" / "job.toml"


def _digits_small(**over):
    cfg = load_job(DIGITS).model_dump()
    cfg["rounds"] = 3
    cfg["train"]["local_epochs"] = 1
    cfg["simulation"]["sites"] = 20
    cfg["strategy"]["sites_per_round"] = 5
    cfg.update(over)
    return parse_job(cfg)


def test_debug_and_parallel_runs_give_the_same_model(tmp_path):
    base = DIGITS.parent
    a = simulate(_digits_small(), out=tmp_path / "par", base_dir=base)
    b = simulate(_digits_small(), out=tmp_path / "dbg", base_dir=base, debug=True)
    assert a.digest == b.digest
    assert a.summary["mode"] == "parallel" and b.summary["mode"] == "debug"
    c = simulate(_digits_small(seed=1), out=tmp_path / "seed1", base_dir=base, debug=True)
    assert c.digest != a.digest


def test_cli_run_writes_the_whole_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", str(DIGITS), "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    assert (out / "job.toml").read_text() == DIGITS.read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert {"round", "sites", "failures", "seconds", "accuracy", "loss"} <= set(r)
        assert r["sites"] == 10 and r["failures"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    spec, weights = load_model(out / "model.safetensors")
    assert summary["model_digest"] and spec.size == 64 * 128 + 128 + 128 * 10 + 10
    _, ckpt = load_model(out / "checkpoints" / "round_0002.safetensors")
    np.testing.assert_array_equal(ckpt, weights)
    part = json.loads((out / "partition.json").read_text())["sites"]
    assert len(part) == 100 and sum(s["examples"] for s in part.values()) == 1437
    assert all(sum(s["labels"]) == s["examples"] for s in part.values())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("accuracy")] == [1, 2]
    assert ea.Scalars("accuracy")[-1].value == pytest.approx(rows[-1]["accuracy"])


def test_sklearn_example_with_federated_evaluation(tmp_path):
    job = ROOT / "examples" / "breast_cancer" / "job.toml"
    result = simulate(job, out=tmp_path / "bc", debug=True)
    last = result.history[-1]
    assert last["accuracy"] > 0.9
    assert {"federated_accuracy", "federated_accuracy_min", "worst_site"} <= set(last)
    assert (
        last["federated_accuracy_min"]
        <= last["federated_accuracy"]
        <= last["federated_accuracy_max"]
    )


def _toy_job(tmp_path, fit="fit", rounds=3):
    shutil.copy(ROOT / "tests" / "fixtures" / "toy_app.py", tmp_path / "toy_app.py")
    return parse_job(
        {
            "rounds": rounds,
            "task": {"framework": "numpy", "app": "toy_app.py", "fit": fit},
            "train": {"lr": 0.5},
            "strategy": {"sites_per_round": 4, "min_sites": 2},
            "simulation": {"sites": 4, "partition": {"method": "iid"}},
        }
    )


def test_failed_round_keeps_the_last_good_model(tmp_path):
    job = _toy_job(tmp_path, fit="fit_then_break")
    with pytest.raises(RoundFailedError, match=r"round 2 fit: 0 replies.*database unavailable"):
        simulate(job, out=tmp_path / "run", base_dir=tmp_path, debug=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 1
    _, final = load_model(tmp_path / "run" / "model.safetensors")
    _, first = load_model(tmp_path / "run" / "checkpoints" / "round_0001.safetensors")
    np.testing.assert_array_equal(final, first)
    assert np.any(final != 0)


def test_function_trainer_converges_to_the_pooled_mean(tmp_path):
    result = simulate(_toy_job(tmp_path, rounds=8), out=tmp_path / "run", base_dir=tmp_path)
    np.testing.assert_allclose(result.weights, [1, 2, 3], atol=0.25)


def test_cli_reports_a_bad_job_in_one_line(tmp_path, capsys):
    bad = tmp_path / "job.toml"
    bad.write_text(DIGITS.read_text().replace("lr = 0.05", "lr = -1"))
    assert main(["simulate", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lr" in err
