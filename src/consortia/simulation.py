"""``simulate``: a whole federation of virtual sites on one machine, from one job file.

Builds the pieces (trainer, partition, sites, strategy, fleet, records) and hands them to
the round loop. Nothing here trains or aggregates; it only wires.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.client.runtime import Site, SiteData
from consortia.client.trainers.base import Trainer
from consortia.core.config import JobConfig, load_job
from consortia.core.dataset import Dataset
from consortia.core.errors import BudgetExhausted, ConfigError, RoundFailedError
from consortia.core.messages import TrainSettings
from consortia.core.rng import generator
from consortia.core.spec import ModelSpec, model_digest
from consortia.data import label_histograms, make_partition
from consortia.fleet.base import Fleet
from consortia.fleet.debug import DebugFleet
from consortia.fleet.pool import PoolFleet
from consortia.monitor.progress import ProgressBar
from consortia.monitor.run_folder import (
    Checkpoints,
    MetricsFile,
    RunFolder,
    default_run_dir,
    run_summary,
)
from consortia.monitor.tensorboard import TensorBoardWriter
from consortia.server.rounds import LoopSettings, LoopState, RoundListener, RoundLoop
from consortia.strategy.presets import Strategy, make_strategy
from consortia.strategy.selection import PoissonSelection, Selection, UniformSelection
from consortia.task import build_trainer, load_dataset

if TYPE_CHECKING:
    from consortia.client.policy import SitePolicy
    from consortia.server.privacy import PrivacyController

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    spec: ModelSpec
    weights: np.ndarray
    history: list[dict[str, Any]]
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return model_digest(self.spec, self.weights)

    @property
    def final_metrics(self) -> dict[str, Any]:
        return dict(self.summary.get("final_metrics", {}))


def add_privacy(
    summary: dict[str, Any],
    folder: RunFolder,
    privacy: PrivacyController | None,
    stopped: str | None,
) -> None:
    """Write privacy.json and put its headline (and any budget stop) in the summary."""
    if privacy is not None:
        report = privacy.report()
        folder.write_privacy(report)
        summary["privacy"] = privacy_summary(report)
    if stopped is not None:
        summary["stopped"] = stopped


def privacy_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The privacy section of summary.json: the headline of privacy.json."""
    out: dict[str, Any] = {"mode": report["mode"], "delta": report["delta"]}
    if "epsilon" in report:
        out["epsilon"] = report["epsilon"]
        out["noise_multiplier"] = report["mechanism"]["noise_multiplier"]
        out["sample_rate"] = report["sampling"]["rate"]
    else:
        eps = [s["epsilon"]["best"] for s in report["per_site"].values() if s["epsilon"]["best"]]
        out["epsilon_max_over_sites"] = max(eps, default=0.0)
    if report["budget"]["stopped"]:
        out["stopped"] = report["budget"]["stopped"]
    return out


def selection_from_config(job: JobConfig, seeded: bool = False) -> Selection:
    """Under central or distributed DP, Poisson sampling (its coin flips seeded only when
    ``seeded``, i.e. in debug and test runs); otherwise the strategy's uniform sample."""
    if job.poisson_sampling:
        assert job.privacy is not None and job.privacy.sample_rate is not None
        return PoissonSelection(job.privacy.sample_rate, seeded=seeded)
    st = job.strategy
    return UniformSelection(fraction=st.fraction, count=st.sites_per_round, min_sites=st.min_sites)


def strategy_from_config(job: JobConfig, seeded: bool = False) -> Strategy:
    """The job's strategy: selection, aggregator, server optimiser and training settings."""
    st = job.strategy
    opt = st.server_optimizer
    options: dict[str, Any] = {}
    if opt.lr is not None:
        options["lr"] = opt.lr
    name = opt.name
    if name in ("adam", "yogi", "adagrad") or (
        name is None and st.preset in ("fedadam", "fedyogi", "fedadagrad")
    ):
        options.update(beta1=opt.beta1, beta2=opt.beta2, tau=opt.tau)
    if name == "momentum" or (name is None and st.preset == "fedavgm"):
        options["momentum"] = opt.momentum
    # TrainConfig (the job file) names its fields as TrainSettings (the message) does.
    settings = TrainSettings(**job.train.model_dump())
    return make_strategy(
        st.preset,
        selection=selection_from_config(job, seeded),
        train=settings,
        aggregator=st.aggregator,
        server_optimizer=name,
        server_options=options,
    )


def loop_settings(job: JobConfig, n_sites: int) -> LoopSettings:
    st, ev = job.strategy, job.evaluation
    fed_sel = None
    if ev.federated_every > 0:
        fed_sel = UniformSelection(fraction=ev.federated_fraction, count=ev.federated_sites)
    min_replies = st.min_replies or st.min_sites
    expected = selection_from_config(job)
    if not job.poisson_sampling and min_replies > expected.how_many(n_sites):
        raise ConfigError(
            f"strategy.min_replies: {min_replies} replies can never arrive when "
            f"{expected.how_many(n_sites)} sites are asked per round"
        )
    return LoopSettings(
        rounds=job.rounds,
        seed=job.seed,
        fit_deadline_s=st.deadline_s,
        min_fit_replies=min_replies,
        central_every=ev.central_every,
        federated_every=ev.federated_every,
        federated_selection=fed_sel,
        evaluate_deadline_s=ev.deadline_s,
    )


def privacy_from_config(
    job: JobConfig, n_sites: int, dimension: int, seeded: bool
) -> PrivacyController | None:
    if job.privacy is None:
        return None
    if job.privacy.mode == "local" and job.privacy.epsilon_limit is not None:
        raise ConfigError(
            "privacy.epsilon_limit: local DP is example-level and spent per site; "
            "set each site's policy (max_epsilon) instead"
        )
    from consortia.server.privacy import PrivacyController

    return PrivacyController(
        job.privacy,
        eligible_sites=n_sites,
        dimension=dimension,
        rounds=job.rounds,
        seed=job.seed,
        seeded=seeded,
    )


def _take(x: Any, idx: np.ndarray) -> Any:
    return x[idx]


def build_sites(job: JobConfig, data: Dataset) -> tuple[list[str], dict[str, SiteData], np.ndarray]:
    """Split the train set among virtual sites; optionally hold out a local evaluation share."""
    sim = job.simulation
    assert sim is not None
    parts = make_partition(
        sim.partition.method, data.y_train, sim.sites, sim.partition.seed, **sim.partition.params()
    )
    width = max(4, len(str(sim.sites - 1)))
    ids = [f"site-{i:0{width}d}" for i in range(sim.sites)]
    sites: dict[str, SiteData] = {}
    for sid, idx in zip(ids, parts, strict=True):
        n_eval = math.floor(sim.local_eval_fraction * len(idx))
        if n_eval:
            shuffled = generator(sim.partition.seed, "local-eval", sid).permutation(idx)
            train_idx, eval_idx = np.sort(shuffled[n_eval:]), np.sort(shuffled[:n_eval])
            sites[sid] = SiteData(
                _take(data.x_train, train_idx),
                data.y_train[train_idx],
                _take(data.x_train, eval_idx),
                data.y_train[eval_idx],
            )
        else:
            sites[sid] = SiteData(_take(data.x_train, idx), data.y_train[idx])
    classes = np.unique(data.y_train)
    hist = (
        label_histograms(np.searchsorted(classes, data.y_train), parts, len(classes))
        if np.issubdtype(data.y_train.dtype, np.integer)
        else np.array([[len(p)] for p in parts])
    )
    return ids, sites, hist


def _site_factory(
    trainer: Trainer, sites: dict[str, SiteData], policy: SitePolicy | None
) -> Callable[[str], Site]:
    def make(site_id: str) -> Site:
        return Site(site_id, trainer, sites[site_id], policy)

    return make


@contextlib.contextmanager
def _fleet(
    debug: bool, ids: list[str], make: Callable[[str], Site], workers: int
) -> Iterator[Fleet]:
    fleet: Fleet = DebugFleet(ids, make) if debug else PoolFleet(ids, make, workers)
    try:
        yield fleet
    finally:
        fleet.close()


def simulate(
    job: str | Path | JobConfig,
    *,
    rounds: int | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    debug: bool = False,
    progress: bool = False,
    base_dir: str | Path | None = None,
) -> SimulationResult:
    """Run a simulated federation; returns the final model and per-round metrics.

    ``job`` is a job file path or a parsed JobConfig (then ``base_dir`` locates ``task.app``).
    On a failed round the last good model is still written and RoundFailedError raised.
    """
    t_start = time.perf_counter()
    job_text = None
    if isinstance(job, (str, Path)):
        path = Path(job)
        cfg = load_job(path)
        job_text = path.read_text()
        base = path.parent
    else:
        cfg, base = job, Path(base_dir or ".")
    updates: dict[str, Any] = {}
    if rounds is not None:
        updates["rounds"] = rounds
    if seed is not None:
        updates["seed"] = seed
    if updates:
        cfg = JobConfig.model_validate({**cfg.model_dump(), **updates})
    if cfg.simulation is None:
        raise ConfigError("simulation: this job has no [simulation] section (virtual sites)")

    trainer = build_trainer(cfg.task, base)
    data = load_dataset(cfg.task, base)
    ids, site_data, hist = build_sites(cfg, data)
    spec, weights = trainer.initial()
    seeded = debug or (cfg.privacy is not None and cfg.privacy.seeded_noise)
    strategy = strategy_from_config(cfg, seeded=seeded)
    settings = loop_settings(cfg, len(ids))
    privacy = privacy_from_config(cfg, len(ids), spec.size, seeded)
    sp = cfg.simulation.site_policy
    policy = None
    if sp is not None:
        from consortia.client.policy import SitePolicy

        policy = SitePolicy(sp.max_epsilon, sp.delta, sp.require_privacy)

    folder = RunFolder(out or default_run_dir())
    if job_text is not None:
        folder.write_job(job_text)
    else:
        folder.write_job(cfg.model_dump_json(indent=1), "job.json")
    folder.write_partition(ids, hist)

    central = None
    if data.has_test and cfg.evaluation.central_every > 0:
        x_test, y_test = data.x_test, data.y_test

        def central(w: np.ndarray) -> dict[str, float]:
            return trainer.evaluate(w, x_test, y_test)

    metrics = MetricsFile(folder)
    checkpoints = Checkpoints(folder, spec)
    tb = TensorBoardWriter(folder.path / "tensorboard")
    listeners: list[RoundListener] = [metrics, checkpoints, tb]
    state = LoopState(0, weights)
    error: str | None = None
    stopped: str | None = None
    # The pool forks here, before any progress-bar thread exists.
    make_site = _site_factory(trainer, site_data, policy)
    with _fleet(debug, ids, make_site, cfg.simulation.workers) as fleet:
        loop = RoundLoop(spec, strategy, fleet, settings, central, listeners, privacy)
        state = loop.initial_state(weights)
        bar = ProgressBar(cfg.rounds) if progress else None
        if bar is not None:
            loop.listeners.append(bar)
        try:
            with bar or contextlib.nullcontext():
                state = loop.run(state)
        except RoundFailedError as exc:
            error = str(exc)
            state = checkpoints.last or state
        except BudgetExhausted as exc:
            stopped = str(exc)
            state = checkpoints.last or state
        finally:
            tb.close()
    digest = folder.write_model(spec, state.weights)
    history = metrics.history
    summary = run_summary(
        folder,
        job=cfg.name,
        status="failed" if error else ("budget_exhausted" if stopped else "completed"),
        rounds=cfg.rounds,
        rounds_completed=state.round,
        history=history,
        seconds=time.perf_counter() - t_start,
        digest=digest,
        error=error,
        sites=len(ids),
        mode="debug" if debug else "parallel",
    )
    add_privacy(summary, folder, privacy, stopped)
    folder.write_summary(summary)
    result = SimulationResult(spec, state.weights, history, folder.path, summary)
    if error is not None:
        raise RoundFailedError(
            f"{error}; the last good model (round {state.round}) is in {folder.path}"
        )
    return result
