"""``simulate``: a whole federation of virtual sites on one machine, from one job file.

Builds the pieces (trainer, partition, site apps, strategy, fleet, recorders) and hands
them to the run driver that deployments use too, so a simulation checkpoints durably and
``resume=True`` continues one from its last completed round. Nothing here trains or
aggregates; it only wires.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.attacks import AttackFleet, choose_malicious
from consortia.attacks.sites import backdoor_metric, poison_sites, trigger_for
from consortia.client.app import SiteApp
from consortia.client.runtime import Site, SiteData
from consortia.client.signing import SiteSigner, save_simulation_keys, simulation_keys, with_ledger
from consortia.client.trainers.base import Trainer
from consortia.core.config import JobConfig
from consortia.core.dataset import Dataset
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.events import Subscriber
from consortia.core.registry import FLEETS
from consortia.core.rng import derive_seed, generator
from consortia.core.spec import ModelSpec, model_digest
from consortia.data import label_histograms, make_partition
from consortia.fleet.base import Fleet, MakeSite
from consortia.monitor.metrics import AuditFile, MetricsFile, TensorBoardWriter
from consortia.security.signing import file_digest, read_signature
from consortia.server.build import (
    loop_settings,
    privacy_from_config,
    selection_from_config,
    strategy_from_config,
)
from consortia.server.run import PreparedJob, Run, RunOptions, privacy_summary
from consortia.server.run_folder import RunFolder, default_run_dir
from consortia.server.workflow import Step
from consortia.strategy.aggregators import Aggregator
from consortia.strategy.presets import Strategy
from consortia.task import app_hook, build_trainer, load_dataset, load_job_with_app, load_root_data

if TYPE_CHECKING:
    from consortia.client.policy import SitePolicy

__all__ = [
    "SimulationResult",
    "build_sites",
    "loop_settings",
    "privacy_from_config",
    "privacy_summary",
    "selection_from_config",
    "simulate",
    "strategy_from_config",
]

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


def partition_notices(ids: Sequence[str], site_data: dict[str, SiteData]) -> list[str]:
    """What the operator should know about the split before round 1: empty sites (they
    reply with weight 0 and teach the model nothing) and the smallest ones."""
    sizes = sorted((site_data[s].num_train, s) for s in ids)
    empty = [s for n, s in sizes if n == 0]
    notices = []
    if empty:
        shown = ", ".join(empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        notices.append(
            f"{len(empty)} of {len(ids)} sites hold no training examples after the partition "
            f"({shown}); they reply with weight 0"
        )
    small = [f"{s} ({n})" for n, s in sizes if n > 0][:3]
    if empty or (sizes and sizes[0][0] < 5):
        notices.append(f"smallest sites by training examples: {', '.join(small) or 'none'}")
    return notices


def preflight(trainer: Trainer, weights: np.ndarray, data: Dataset) -> None:
    """One example of each label through the model before round 1: a model that cannot
    take the task's data is one clear error now, not a failure on some sites per round."""
    y = np.asarray(data.y_train)
    if y.size == 0:
        raise ConfigError("task.data: the training split is empty")
    if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
        _, first = np.unique(y, return_index=True)
    else:
        first = np.arange(min(len(y), 8))
    x, labels = _take(data.x_train, first), y[first]
    check = getattr(trainer, "preflight", None)
    try:
        if check is not None:
            check(weights, x, labels)
        else:
            trainer.evaluate(weights, x, labels)
    except ConfigError as exc:
        raise ConfigError(f"preflight: {exc}") from None
    except Exception as exc:  # the user's model or data code: any error, said in one line
        raise ConfigError(
            f"preflight: the task's model cannot evaluate one example of each label: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def site_policies(cfg: JobConfig, ids: Sequence[str]) -> dict[str, SitePolicy]:
    """Each virtual site's policy: its own ``[simulation.site_policies.ID]`` if given,
    else the shared ``[simulation.site_policy]``, else none."""
    assert cfg.simulation is not None
    sim = cfg.simulation
    unknown = sorted(set(sim.site_policies) - set(ids))
    if unknown:
        raise ConfigError(
            f"simulation.site_policies: no site named {unknown[0]!r} (sites are "
            f"{ids[0]} .. {ids[-1]})"
        )
    if sim.site_policy is None and not sim.site_policies:
        return {}
    from consortia.client.policy import SitePolicy

    out = {}
    for site in ids:
        chosen = sim.site_policies.get(site, sim.site_policy)
        if chosen is not None:
            out[site] = SitePolicy.from_config(chosen)
    return out


def _site_factory(
    trainer: Trainer,
    sites: dict[str, SiteData],
    policies: dict[str, SitePolicy],
    noise_seed: int | None = None,
) -> MakeSite:
    """``noise_seed`` (reproducible runs only): each site derives its own seed from it and
    its name, where it is built, as a site's local setting; no fit message carries it."""

    def make(site_id: str) -> SiteApp:
        seed = None if noise_seed is None else derive_seed(noise_seed, "site-noise", site_id)
        policy = policies.get(site_id)
        return Site(site_id, trainer, sites[site_id], policy, noise_seed=seed)

    return make


def _load(
    job: str | Path | JobConfig, base_dir: str | Path | None, updates: dict[str, Any]
) -> tuple[JobConfig, Path, str | None]:
    if isinstance(job, (str, Path)):
        path = Path(job)
        cfg, text, base = load_job_with_app(path), path.read_text(), path.parent
    else:
        cfg, text, base = job, None, Path(base_dir or ".")
    if updates:
        cfg = JobConfig.model_validate({**cfg.model_dump(), **updates})
    if cfg.simulation is None:
        raise ConfigError("simulation: this job has no [simulation] section (virtual sites)")
    return cfg, base, text


def simulate(
    job: str | Path | JobConfig,
    *,
    rounds: int | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    debug: bool = False,
    progress: bool = False,
    base_dir: str | Path | None = None,
    resume: bool = False,
    strategy: Strategy | None = None,
    aggregator: Aggregator | None = None,
    listeners: Sequence[Subscriber] = (),
    make_site: MakeSite | None = None,
    steps: Callable[[list[Step]], list[Step]] | None = None,
    ledger: bool = True,
) -> SimulationResult:
    """Run a simulated federation; returns the final model and per-round metrics.

    ``job`` is a job file path or a parsed JobConfig (then ``base_dir`` locates ``task.app``).
    ``strategy`` or ``aggregator`` replace the job's; ``listeners`` subscribe to the run's
    events; ``make_site(site_id)`` builds each site's app instead of the built-in ``Site``;
    ``steps`` edits the list of round steps. ``resume=True`` continues the run in ``out``.
    ``ledger=False`` keeps no signed ledger (docs/ledger.md; only to measure its cost).
    On a failed round the last good model is still written and RoundFailedError raised.
    """
    updates: dict[str, Any] = {}
    if rounds is not None:
        updates["rounds"] = rounds
    if seed is not None:
        updates["seed"] = seed
    cfg, base, text = _load(job, base_dir, updates)
    assert cfg.simulation is not None
    job_path = Path(job) if isinstance(job, (str, Path)) else None
    if resume and out is None:
        raise ConfigError("resume: name the run folder to continue (out=...)")

    trainer = build_trainer(cfg.task, base)
    data = load_dataset(cfg.task, base)
    ids, site_data, hist = build_sites(cfg, data)
    seeded = debug or (cfg.privacy is not None and cfg.privacy.seeded_noise)
    policies = site_policies(cfg, ids)

    attack = cfg.simulation.attack
    malicious: list[str] = []
    backdoor = None
    if attack is not None:
        malicious = choose_malicious(ids, attack)
        trigger = trigger_for(attack, data.x_train) if attack.kind == "backdoor" else None
        site_data = poison_sites(site_data, malicious, attack, np.unique(data.y_train), trigger)
        if trigger is not None and data.has_test:
            backdoor = backdoor_metric(trainer.evaluate, data.x_test, data.y_test, trigger)

    central = None
    if data.has_test and cfg.evaluation.central_every > 0:
        x_test, y_test = data.x_test, data.y_test

        def central(w: np.ndarray) -> dict[str, float]:
            metrics = trainer.evaluate(w, x_test, y_test)
            return metrics if backdoor is None else {**metrics, **backdoor(w)}

    fleet_name = "debug" if debug else cfg.simulation.fleet
    factory = FLEETS.get(fleet_name)
    custom = make_site or app_hook(cfg.task, base, "site")
    make = custom or _site_factory(trainer, site_data, policies, cfg.seed if seeded else None)
    run_dir = Path(out) if out is not None else default_run_dir()
    signers: dict[str, SiteSigner] = {}
    if ledger:  # before the pool forks: each worker's sites take their keys with them
        signers = simulation_keys(run_dir, ids, resume)
        make = with_ledger(make, run_dir, signers)
    # The pool forks here: before any progress-bar thread exists (the bar starts with the
    # run), and before the initial model exists, so that no worker holds a copy of it.
    fleet: Fleet = factory(ids, make, cfg.simulation.workers)  # type: ignore[operator]
    if attack is not None:
        fleet = AttackFleet(fleet, malicious, attack)
    try:
        spec, weights = trainer.initial()
        if not custom:
            preflight(trainer, weights, data)
        prepared = PreparedJob(
            text if text is not None else cfg.model_dump_json(indent=1),
            cfg,
            trainer,
            spec,
            weights,
            central,
            text_name="job.toml" if text is not None else "job.json",
            # The number of rounds is the store's to track (a resume may extend a run).
            overrides={k: v for k, v in updates.items() if k != "rounds"},
            workflow=app_hook(cfg.task, base, "workflow"),
            root=load_root_data(cfg, base),
            release_initial=True,
            file_sha256=None if job_path is None else file_digest(job_path),
            signature=None if job_path is None else read_signature(job_path),
        )
        del weights  # the run takes the initial model from `prepared` and lets it go
        bar = None
        if progress:  # imported here: rich costs 40 ms, which a run without a bar never needs
            from consortia.monitor.progress import ProgressBar

            bar = ProgressBar(cfg.rounds)
        subscribers: list[Subscriber] = [
            MetricsFile(),
            AuditFile(),
            TensorBoardWriter(),
            *listeners,
        ]
        if bar is not None:
            subscribers.append(bar)

        def on_open(folder: RunFolder) -> None:
            folder.write_partition(ids, hist)
            save_simulation_keys(folder.path, signers)

        options = RunOptions(
            out=run_dir,
            resume=resume,
            rounds=rounds,
            round_retries=0,
            mode="debug" if debug else ("parallel" if fleet_name == "pool" else fleet_name),
            eligible_sites=len(ids),
            seeded=seeded,
            min_sites=1,
            ledger=ledger,
        )
        run = Run(
            prepared,
            options,
            lambda job_id: fleet,
            subscribers=subscribers,
            strategy=strategy,
            aggregator=aggregator,
            steps=steps,
            summary_extra=lambda store, state: (
                {"sites": len(ids)} | ({"malicious_sites": malicious} if attack is not None else {})
            ),
            on_open=on_open,
            site_identity=lambda site: signers[site].identity if site in signers else None,
            # The partition is what sites train on only when they are the built-in Site.
            notices=[] if custom else partition_notices(ids, site_data),
        )
        result = run.run()
    finally:
        fleet.close()
    summary = result.summary
    sim = SimulationResult(
        spec, result.state.weights, result.history, Path(summary["run_dir"]), summary
    )
    if summary.get("status") == "failed":
        raise RoundFailedError(
            f"{summary.get('error')}; the last good model (round {result.state.round}) is in "
            f"{summary['run_dir']}"
        )
    return sim
