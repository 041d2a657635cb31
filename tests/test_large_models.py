"""Large models in simulation: memory bounded by a few model copies, however many sites a
round has, and the same final model on every fleet.

Memory is measured as a user would see it: the simulation runs in a child process and the
test samples the proportional set size (PSS) of that process and all its workers with
psutil, through the benchmarks' own instrument. Nothing here is timed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from consortia import simulate
from consortia.core.config import parse_job

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "examples" / "bigmodel"
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


def _measure() -> Any:
    """The benchmarks' own instrument (bench/_measure.py): tree PSS sampled with psutil."""
    name = "consortia_bench_measure"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "_measure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
    os.environ["BIGMODEL_PARAMS"] = str(params)
    try:
        m = _measure().measure(cmd, interval_s=0.01)
    finally:
        del os.environ["BIGMODEL_PARAMS"]
    assert m.returncode == 0
    return m.peak_pss, json.loads(out.read_text())


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
