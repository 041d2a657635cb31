"""Large models in simulation: memory bounded by a few model copies, however many sites a
round has, and the same final model on every fleet.

Memory is measured as a user would see it: the simulation runs in a child process and the
test samples the proportional set size (PSS) of that process and all its workers with
psutil. Nothing here is timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from consortia import simulate
from consortia.core.config import parse_job

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "bigmodel"
WORKERS = 2

CHILD = """
import json, sys
from pathlib import Path
from consortia import simulate
from consortia.core.config import parse_job
job = parse_job(json.loads(sys.argv[1]), "bigmodel")
result = simulate(job, out=Path(sys.argv[2]), base_dir=sys.argv[3])
Path(sys.argv[4]).write_text(json.dumps({"digest": result.digest, "rounds": len(result.history)}))
"""


def _job(sites_per_round: int, fleet: str = "pool", federated: bool = False) -> dict:
    return {
        "name": "bigmodel",
        "rounds": 2,
        "seed": 0,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": {"preset": "fedavg", "sites_per_round": sites_per_round, "min_sites": 2},
        "evaluation": {
            "central_every": 1,
            "federated_every": 1 if federated else 0,
            "federated_sites": 4,
        },
        "simulation": {
            "sites": 100,
            "workers": WORKERS,
            "fleet": fleet,
            "partition": {"method": "iid", "seed": 0},
            "local_eval_fraction": 0.25 if federated else 0.0,
        },
    }


def _frozen_tree_pss(root: psutil.Process) -> int:
    """PSS of a process and its descendants at one instant: the tree is stopped while it
    is read. Read one by one while running, a page that passes from one process to
    another (the model file, mapped by each worker in turn) can be counted twice."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    stopped = []
    try:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.suspend()
                stopped.append(p)
        total = 0
        for p in stopped:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total
    finally:
        for p in stopped:
            with contextlib.suppress(psutil.Error):
                p.resume()


def _peak_pss(params: int, sites_per_round: int, tmp: Path) -> tuple[int, dict]:
    """Peak PSS (bytes) of a child process running the simulation, with its workers."""
    out = tmp / f"r{params}-{sites_per_round}.json"
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        json.dumps(_job(sites_per_round)),
        str(tmp / f"run-{params}-{sites_per_round}"),
        str(APP_DIR),
        str(out),
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "BIGMODEL_PARAMS": str(params)})
    root, peak = psutil.Process(proc.pid), 0
    try:
        while proc.poll() is None:
            peak = max(peak, _frozen_tree_pss(root))
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0
    return peak, json.loads(out.read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="PSS is read from Linux's /proc")
def test_peak_memory_is_a_few_models_whatever_the_sites_per_round(tmp_path: Path) -> None:
    params = 5_000_000
    model = params * 4
    machinery, _ = _peak_pss(1_000, 50, tmp_path)  # the same run with a negligible model
    few, r10 = _peak_pss(params, 10, tmp_path)
    many, r50 = _peak_pss(params, 50, tmp_path)
    assert r10["rounds"] == r50["rounds"] == 2
    print(
        f"models above the machinery: {(many - machinery) / model:.2f} at 50 sites a round, "
        f"{(few - machinery) / model:.2f} at 10"
    )
    # what the model costs: at most (workers + 4) copies for 50 sites a round
    assert many - machinery <= (WORKERS + 4) * model, (many - machinery) / model
    # and five times the sites per round costs less than one more copy
    assert many - few < model, (many - few) / model


@pytest.mark.parametrize("federated", [False, True])
def test_large_models_give_the_same_model_on_the_pool_and_debug_fleets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, federated: bool
) -> None:
    monkeypatch.setenv("BIGMODEL_PARAMS", "300000")  # 1.2 MB: large enough for the files
    results = {
        fleet: simulate(
            parse_job(_job(8, fleet, federated), "bigmodel"),
            out=tmp_path / fleet,
            base_dir=APP_DIR,
        )
        for fleet in ("debug", "pool")
    }
    debug, pool = results["debug"], results["pool"]
    assert debug.digest == pool.digest
    assert debug.history == [
        {k: v for k, v in r.items() if k != "seconds"} | {"seconds": d["seconds"]}
        for r, d in zip(pool.history, debug.history, strict=True)
    ]
    if federated:
        assert "federated_loss" in pool.history[-1]
    peak = pool.summary["peak_memory"]
    assert peak["server"] > 0 and len(peak["site_workers"]) == WORKERS
