"""docs/extending.md, run: a custom aggregator, a stateful site app that loads its own data,
a new two-phase message exchange and an event subscriber, unchanged on the debug fleet,
the process pool and gRPC with mutual TLS; and the combinations the job file refuses."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia
from consortia.core.config import parse_job
from consortia.core.errors import ConfigError
from consortia.deployment import Deployment, DeployOptions, prepare_job
from consortia.fleet.grpc import GrpcFleet, JobEnded, run_site
from consortia.security.pki import add_site, init_pki
from consortia.task import load_app

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
EXAMPLE = ROOT / "examples" / "extending"
JOB = EXAMPLE / "job.toml"
ROUNDS = 5


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _app() -> Any:
    return load_app("app.py", EXAMPLE)


def test_every_code_block_of_the_page_is_the_example_or_runs_against_it(tmp_path: Path) -> None:
    source = (EXAMPLE / "app.py").read_text()
    usage = [b for b in _blocks() if b.strip() not in source]
    assert len(_blocks()) >= 6
    (block,) = usage  # the one block that uses the example rather than defines it
    code = block.replace("runs/extending-2", str(tmp_path / "run"))
    code = code.replace("examples/extending/job.toml", str(JOB))
    code = code.replace("from app import BestRound", "BestRound = _app().BestRound")
    env: dict[str, Any] = {"_app": _app}
    exec(compile(code, str(DOC), "exec"), env)  # the page's own code, as a user would run it
    assert env["best"].round is not None and env["best"].accuracy > 0.9


def _check_history(history: list[dict[str, Any]]) -> None:
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    for r in history:
        assert r["failures"] == 0
        assert r["proven_sites"] == 4  # the two-phase exchange: every site kept its secret
        assert r["train_rounds_seen"] == r["round"]  # one object per site, across rounds
    assert history[-1]["accuracy"] > 0.9


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory: pytest.TempPathFactory) -> consortia.SimulationResult:
    best = _app().BestRound()
    result = consortia.simulate(
        JOB, out=tmp_path_factory.mktemp("debug") / "run", debug=True, listeners=[best]
    )
    assert best.round is not None and best.accuracy == max(r["accuracy"] for r in result.history)
    return result


def test_simulation_in_process(debug_run: consortia.SimulationResult) -> None:
    _check_history(debug_run.history)
    assert debug_run.summary["mode"] == "debug"


def test_simulation_on_the_process_pool_gives_the_same_model(
    debug_run: consortia.SimulationResult, tmp_path: Path
) -> None:
    result = consortia.simulate(JOB, out=tmp_path / "run")
    _check_history(result.history)
    assert result.summary["mode"] == "parallel"
    assert result.digest == debug_run.digest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_over_grpc_with_mutual_tls(debug_run: consortia.SimulationResult, tmp_path: Path) -> None:
    names = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
    pki = init_pki(tmp_path / "pki")
    for name in names:
        add_site(pki, name)
    address = f"127.0.0.1:{_free_port()}"
    app = _app()
    ended: dict[str, JobEnded | None] = {}
    stop = threading.Event()

    def serve(name: str) -> None:
        ended[name] = run_site(
            address,
            app.HospitalSite(name),
            pki / "sites" / name,
            stop=stop,
            heartbeat_s=0.5,
            initial_backoff_s=0.05,
            max_backoff_s=0.2,
        )

    threads = [threading.Thread(target=serve, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    best = app.BestRound()
    try:
        summary = Deployment(
            prepare_job(JOB),
            DeployOptions(out=tmp_path / "run", min_sites=4),
            lambda job_id: GrpcFleet(address, job_id=job_id, pki_dir=pki, heartbeat_s=0.5),
            subscribers=[best],
        ).run()
        for t in threads:
            t.join(10)
    finally:
        stop.set()
    assert summary["status"] == "completed" and summary["site_names"] == names
    history = [
        __import__("json").loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    _check_history(history)
    assert best.round is not None
    # Sites heard that the job was over, and their run_site returned by itself.
    assert not any(t.is_alive() for t in threads)
    assert {n: e.status for n, e in ended.items() if e is not None} == dict.fromkeys(
        names, "completed"
    )


def _job(**strategy: Any) -> dict[str, Any]:
    return {
        "rounds": 1,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": {"min_sites": 1, **strategy},
    }


def test_an_all_updates_aggregator_with_distributed_dp_is_refused_at_load() -> None:
    data = _job(aggregator="median")
    data["privacy"] = {
        "mode": "distributed",
        "sample_rate": 0.5,
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
    }
    with pytest.raises(ConfigError, match=r"strategy\.aggregator: 'median' needs every update"):
        parse_job(data)
    data["privacy"]["mode"] = "central"
    with pytest.raises(ConfigError, match=r"strategy\.aggregator"):
        parse_job(data)
    data["strategy"]["aggregator"] = "weighted_mean"
    assert parse_job(data).strategy.aggregator == "weighted_mean"


def test_unknown_component_names_are_refused_naming_the_field_and_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy\.aggregator: .*unknown aggregator 'zeno'.*choose from .*krum"
    ):
        parse_job(_job(aggregator="zeno", sites_per_round=1))
    with pytest.raises(ConfigError, match=r"strategy\.preset: .*choose from .*fedadam"):
        parse_job(_job(preset="fedlion", sites_per_round=1))


def test_a_registered_aggregator_runs_with_its_state_across_rounds(tmp_path: Path) -> None:
    """State an aggregator returns is handed back next round (and survives a resume)."""

    def counting_mean(updates: np.ndarray, weights: np.ndarray, sites: Any, state: Any) -> Any:
        n = state.get("rounds", np.zeros(1))[0] + 1
        return updates.mean(axis=0), {"rounds": np.array([n])}

    agg = consortia.AllUpdatesAggregator("counting_mean", counting_mean)
    consortia.register_aggregator(agg, replace=True)
    result = consortia.simulate(
        ROOT / "tests" / "fixtures" / "toy_job.toml", out=tmp_path / "run", aggregator=agg
    )
    from consortia.server.store import ServerStore

    with ServerStore(tmp_path / "run" / "state.sqlite") as store:
        assert store.last_completed() is not None
    assert result.summary["rounds_completed"] == 3
    from safetensors.numpy import load_file

    state = load_file(tmp_path / "run" / "checkpoints" / "round_0003.optimizer.safetensors")
    assert state["aggregator/rounds"][0] == 3
