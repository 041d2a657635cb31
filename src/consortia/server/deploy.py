"""A real deployment's server: a job file wired to a Fleet, the round loop, the store, a run folder.

The same job file as in simulation (its ``[simulation]`` section is not used: real sites
bring their own data). Before every round the server waits until enough sites are
connected; a round that gets too few replies is tried again (up to ``round_retries``
times in a row). Each completed round is made durable in this order: checkpoint files
(fsynced, atomically renamed), then one SQLite transaction naming them with their
digests, then metrics.jsonl and TensorBoard. ``resume=True`` continues from the last
committed round after checking the job file, the model and the checkpoint's digests, so
a server killed at any instant loses at most the round it was running.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from consortia.client.trainers.base import Trainer
from consortia.core.config import JobConfig, load_job
from consortia.core.errors import BudgetExhausted, ConfigError, RoundFailedError
from consortia.core.spec import ModelSpec, model_digest
from consortia.fleet.base import Fleet
from consortia.monitor.run_folder import MetricsFile, RunFolder, run_summary
from consortia.monitor.tensorboard import TensorBoardWriter
from consortia.server.records import DurableRounds, RecordingFleet
from consortia.server.rounds import LoopState, RoundListener, RoundLoop, RoundRecord
from consortia.server.store import (
    STORE_FILE,
    JobRow,
    ServerStore,
    StoreError,
    read_checkpoint,
    write_checkpoint,
)
from consortia.simulation import (
    add_privacy,
    loop_settings,
    privacy_from_config,
    strategy_from_config,
)
from consortia.task import build_trainer, load_app, load_dataset

if TYPE_CHECKING:
    from consortia.server.privacy import PrivacyController

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """What the server tells its operator (the CLI prints it; tests may ignore it)."""

    def waiting(self, connected: list[str], needed: int) -> None: ...

    def round_started(self, number: int, total: int, connected: list[str]) -> None: ...

    def round_done(self, record: RoundRecord, total: int) -> None: ...

    def round_failed(self, number: int, error: str, attempt: int) -> None: ...


class QuietReporter:
    def waiting(self, connected: list[str], needed: int) -> None:
        log.info("waiting for sites: %d of %d connected", len(connected), needed)

    def round_started(self, number: int, total: int, connected: list[str]) -> None:
        log.info("round %d/%d starting with %d sites", number, total, len(connected))

    def round_done(self, record: RoundRecord, total: int) -> None:
        log.info("round %d/%d done in %.2f s", record.round, total, record.seconds)

    def round_failed(self, number: int, error: str, attempt: int) -> None:
        log.warning("round %d attempt %d failed: %s", number, attempt, error)


@dataclass(frozen=True)
class DeployOptions:
    out: Path
    resume: bool = False
    min_sites: int | None = None  # default: the job's strategy.min_sites
    rounds: int | None = None  # default: the job's rounds (or, on resume, the stored total)
    round_retries: int = 3
    status_every_s: float = 10.0


@dataclass
class PreparedJob:
    """A job file turned into what the server needs: no sites, no data split."""

    path: Path
    text: str
    config: JobConfig
    trainer: Trainer
    spec: ModelSpec
    weights: np.ndarray
    central: Callable[[np.ndarray], dict[str, float]] | None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def prepare_job(path: str | Path) -> PreparedJob:
    """Build the trainer (for the spec and initial weights) and, where the task has a data
    function with a test split and ``central_every > 0``, the central evaluation."""
    path = Path(path)
    cfg = load_job(path)
    text = path.read_text()
    base = path.parent
    trainer = build_trainer(cfg.task, base)
    spec, weights = trainer.initial()
    central = None
    has_data = callable(getattr(load_app(cfg.task.app, base), cfg.task.data, None))
    if cfg.evaluation.central_every > 0 and has_data:
        data = load_dataset(cfg.task, base)
        if data.has_test:
            x_test, y_test = data.x_test, data.y_test

            def central(w: np.ndarray) -> dict[str, float]:
                return trainer.evaluate(w, x_test, y_test)

    elif cfg.evaluation.central_every > 0:
        log.info("task.data %r not found: no central evaluation", cfg.task.data)
    return PreparedJob(path, text, cfg, trainer, spec, weights, central)


def _wait(fleet: Fleet, n: int, every_s: float, reporter: Reporter) -> list[str]:
    waiter = getattr(fleet, "wait_for_sites", None)
    if waiter is None:  # a fleet with a fixed set of sites (debug, pool)
        if len(fleet.sites()) < n:
            raise ConfigError(f"{n} sites needed, the fleet has {len(fleet.sites())}")
        return fleet.sites()
    from consortia.fleet.grpc import SitesTimeoutError

    while True:
        try:
            return list(waiter(n, every_s))
        except SitesTimeoutError:
            reporter.waiting(fleet.sites(), n)


class Deployment:
    """One server run of a job; ``run()`` returns the summary written to summary.json."""

    def __init__(
        self,
        job: PreparedJob,
        options: DeployOptions,
        make_fleet: Callable[[str], Fleet],
        reporter: Reporter | None = None,
    ) -> None:
        self.job = job
        self.options = options
        self.make_fleet = make_fleet
        self.reporter: Reporter = reporter or QuietReporter()
        self.min_sites = options.min_sites or job.config.strategy.min_sites
        if self.min_sites < 1:
            raise ConfigError(f"--min-sites must be at least 1, got {self.min_sites}")

    def _open(self) -> tuple[ServerStore, RunFolder, LoopState, JobRow, int]:
        out = Path(self.options.out)
        store_path = out / STORE_FILE
        if not self.options.resume and store_path.exists():
            with ServerStore(store_path) as s:
                old = s.job()
                done = len(s.completed_rounds())
            if old is not None:
                raise StoreError(
                    f"{out} already holds job {old.id!r} ({done} of {old.rounds} rounds "
                    "completed); pass --resume to continue it, or choose another --out. "
                    "Nothing was overwritten."
                )
        if self.options.resume and not store_path.exists():
            raise StoreError(f"nothing to resume: {store_path} does not exist")
        folder = RunFolder(out)
        store = ServerStore(store_path)
        try:
            return (store, folder, *self._load_or_create(store, folder))
        except BaseException:
            store.close()
            raise

    def _load_or_create(
        self, store: ServerStore, folder: RunFolder
    ) -> tuple[LoopState, JobRow, int]:
        job, cfg, spec = self.job, self.job.config, self.job.spec
        row = store.job()
        if row is None:
            if self.options.resume:
                raise StoreError(f"nothing to resume: {store.path} records no job")
            rounds = self.options.rounds or cfg.rounds
            state = LoopState(0, job.weights, self._strategy_init(job.weights))
            rel = "checkpoints/round_0000.safetensors"
            sha, opt_sha = write_checkpoint(
                folder.path / rel, spec, state.weights, state.optimizer_state
            )
            row = JobRow(
                f"{cfg.name}-{secrets.token_hex(4)}",
                cfg.name,
                job.digest,
                spec.digest(),
                rounds,
                rel,
                sha,
                opt_sha,
                "running",
            )
            store.create_job(row)
            folder.write_job(job.text)
            return state, row, rounds
        if row.job_digest != job.digest:
            raise StoreError(
                f"the job file {job.path} changed since job {row.id!r} started (sha256 "
                f"{job.digest[:16]}..., recorded {row.job_digest[:16]}...); resuming would mix "
                "two jobs. Restore the original file or start a new run in another --out."
            )
        if row.spec_digest != spec.digest():
            raise StoreError(
                f"the task's model no longer matches job {row.id!r} (its spec changed); "
                "restore the original task code or start a new run"
            )
        last = store.last_completed()
        if last is None:
            weights, opt = read_checkpoint(
                folder.path / row.initial_checkpoint,
                spec,
                row.initial_digest,
                row.initial_optimizer_digest,
            )
            state = LoopState(0, weights, opt)
        else:
            weights, opt = read_checkpoint(
                folder.path / last.checkpoint, spec, last.checkpoint_digest, last.optimizer_digest
            )
            if model_digest(spec, weights) != last.model_digest:
                raise StoreError(f"checkpoint of round {last.number} holds another model")
            state = LoopState(last.number, weights, opt)
        rounds = self.options.rounds or row.rounds
        if rounds < state.round:
            raise ConfigError(f"--rounds {rounds}: the job already completed {state.round}")
        if rounds != row.rounds:
            store.set_job(rounds=rounds)
        if state.round < rounds:
            store.set_job(status="running")
        log.info("resuming job %s after round %d of %d", row.id, state.round, rounds)
        return state, row, rounds

    def _privacy(self, store: ServerStore) -> PrivacyController | None:
        """The job's DP wrapper, with what earlier rounds of this job already spent."""
        cfg = self.job.config
        if cfg.privacy is None:
            return None
        population = cfg.privacy.population
        if cfg.poisson_sampling and population is None:
            raise ConfigError(
                "privacy.population: a deployment must state how many sites are eligible "
                "(N, the denominator q*N of DP-FedAvg)"
            )
        ctl = privacy_from_config(
            cfg, population or self.min_sites, self.job.spec.size, cfg.privacy.seeded_noise
        )
        assert ctl is not None
        done = store.completed_rounds()
        if done:
            ctl.restore([r.metrics for r in done])
            for r in done:
                for p in store.participants(r.number):
                    if p.phase == "fit" and p.outcome == "replied":
                        ctl.participation[p.site] = ctl.participation.get(p.site, 0) + 1
        return ctl

    def _strategy_init(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        return dict(strategy_from_config(self.job.config).server_optimizer.init(weights))

    def run(self) -> dict[str, Any]:
        t_start = time.perf_counter()
        store, folder, state, row, rounds = self._open()
        metrics = MetricsFile(folder)  # starts metrics.jsonl afresh: refilled from the store
        with (folder.path / "metrics.jsonl").open("a") as f:
            for r in store.completed_rounds():
                metrics.history.append(r.metrics)
                f.write(json_line(r.metrics))
        resumed_from = state.round if self.options.resume else None
        error: str | None = None
        stopped: str | None = None
        status = "failed"
        fleet: RecordingFleet | None = None
        privacy: PrivacyController | None = None
        tb = TensorBoardWriter(folder.path / "tensorboard")
        try:
            cfg = self.job.config
            settings = dataclasses.replace(loop_settings(cfg, self.min_sites), rounds=rounds)
            fleet = RecordingFleet(self.make_fleet(row.id))
            privacy = self._privacy(store)
            listeners: list[RoundListener] = [
                DurableRounds(folder, store, self.job.spec, fleet),
                metrics,
                tb,
                _Progress(self.reporter, rounds),
            ]
            loop = RoundLoop(
                self.job.spec,
                strategy_from_config(cfg),
                fleet,
                settings,
                self.job.central,
                listeners,
                privacy,
            )
            state, error, stopped = self._rounds(loop, fleet, store, state, rounds)
            status = "failed" if error else ("budget_exhausted" if stopped else "completed")
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted by the operator"
            raise
        finally:
            if fleet is not None:
                fleet.close()
            tb.close()
            if status != "interrupted":
                store.set_job(status=status)
            summary = self._summary(folder, store, state, rounds, status, error, t_start)
            summary["resumed_from_round"] = resumed_from
            add_privacy(summary, folder, privacy, stopped)
            folder.write_summary(summary)
            store.close()
        if error is not None:
            raise RoundFailedError(
                f"{error}; the last good model (round {state.round}) is in {folder.path}; "
                "fix the cause and continue with --resume"
            )
        return summary

    def _rounds(
        self,
        loop: RoundLoop,
        fleet: RecordingFleet,
        store: ServerStore,
        state: LoopState,
        rounds: int,
    ) -> tuple[LoopState, str | None, str | None]:
        """Run to the end; return (last state, error, budget stop)."""
        failed_in_a_row = 0
        while state.round < rounds:
            rnd = state.round + 1
            connected = _wait(
                fleet.inner, self.min_sites, self.options.status_every_s, self.reporter
            )
            self.reporter.round_started(rnd, rounds, connected)
            fleet.batches = []
            try:
                state = loop.run_round(state)
            except BudgetExhausted as exc:
                return state, None, str(exc)
            except (RoundFailedError, ConfigError) as exc:
                if isinstance(exc, ConfigError) and len(fleet.sites()) >= self.min_sites:
                    raise  # a real configuration error, not sites leaving mid-selection
                failed_in_a_row += 1
                store.record_failed_attempt(rnd, str(exc), fleet.participants(None))
                self.reporter.round_failed(rnd, str(exc), failed_in_a_row)
                if failed_in_a_row > self.options.round_retries:
                    return state, str(exc), None
                continue
            failed_in_a_row = 0
        return state, None, None

    def _summary(
        self,
        folder: RunFolder,
        store: ServerStore,
        state: LoopState,
        rounds: int,
        status: str,
        error: str | None,
        t_start: float,
    ) -> dict[str, Any]:
        digest = folder.write_model(self.job.spec, state.weights)
        history = [r.metrics for r in store.completed_rounds()]
        sites = sorted({p.site for r in range(1, state.round + 1) for p in store.participants(r)})
        row = store.job()
        return run_summary(
            folder,
            job=self.job.config.name,
            status=status,
            rounds=rounds,
            rounds_completed=state.round,
            history=history,
            seconds=time.perf_counter() - t_start,
            digest=digest,
            error=error,
            job_id=row.id if row else None,
            sites=len(sites),
            site_names=sites,
            mode="deployment",
        )


@dataclass
class _Progress:
    reporter: Reporter
    total: int

    def on_round(self, record: RoundRecord, state: LoopState) -> None:
        self.reporter.round_done(record, self.total)


def json_line(row: dict[str, Any]) -> str:
    return json.dumps(row) + "\n"
