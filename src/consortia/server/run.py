"""The one run driver: a job's rounds over a fleet, made durable, for simulation and
deployment alike.

Before every round the driver waits until enough sites can be asked; a round that fails
(too few replies) is tried again up to ``round_retries`` times in a row; a round that
would pass the privacy budget stops the run. Each completed round is made durable in
this order: checkpoint files (fsynced, atomically renamed), then one SQLite transaction
naming them with their digests; only then is ``RoundDone`` published to subscribers
(metrics file, TensorBoard, progress, ledger). ``resume=True`` continues from the last
committed round after checking the job file, the model and the checkpoint's digests, so
a run killed at any instant loses at most the round it was running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from consortia.client.trainers.base import Trainer
from consortia.core.config import JobConfig
from consortia.core.errors import BudgetExhausted, ConfigError, RoundFailedError
from consortia.core.events import (
    EventBus,
    LoopState,
    Notice,
    PhaseRecord,
    RoundDone,
    RoundFailed,
    RoundStarted,
    RunFinished,
    RunStarted,
    State,
    Subscriber,
    WaitingForSites,
    public_row,
)
from consortia.core.join import JoinStatement
from consortia.core.manifest import JobManifest, is_policy_refusal, printable
from consortia.core.memory import MIB, peak_rss_bytes
from consortia.core.spec import ModelSpec, model_digest
from consortia.fleet.admitted import AdmittedFleet
from consortia.fleet.base import Fleet, Timing
from consortia.ledger import kinds as K
from consortia.ledger.chain import Entry, LedgerError
from consortia.ledger.sign import KEY_FILE, PUBLIC_FILE, LedgerKey
from consortia.security.signing import file_digest, read_signature
from consortia.server.audit import Auditor, flagged_sites
from consortia.server.build import loop_settings, privacy_from_config, strategy_from_config
from consortia.server.manifest import job_manifest
from consortia.server.provenance import IdentityOf, Provenance, checkpoint_payload
from consortia.server.receipt_outbox import DEFAULT_BUDGET, ReceiptOutbox
from consortia.server.run_folder import RunFolder, run_summary
from consortia.server.store import (
    STORE_FILE,
    JobRow,
    Participant,
    RoundRow,
    ServerStore,
    StoreError,
    read_checkpoint,
    write_checkpoint,
)
from consortia.server.workflow import Step, Workflow, standard_steps
from consortia.strategy.aggregators import Aggregator
from consortia.strategy.presets import Strategy
from consortia.strategy.robust.audit import AuditThresholds
from consortia.task import load_app, load_dataset

if TYPE_CHECKING:
    from consortia.server.privacy import PrivacyController
    from consortia.server.secure_fit import SecureAggregationLog

log = logging.getLogger(__name__)

_AGG_PREFIX = "aggregator/"


@dataclass
class PreparedJob:
    """A job turned into what the server needs: the model, the central evaluation."""

    text: str
    config: JobConfig
    trainer: Trainer | None
    spec: ModelSpec
    # The initial model; None once a run released it (see ``release_initial``).
    weights: np.ndarray | None
    central: Callable[[np.ndarray], dict[str, float]] | None
    path: Path | None = None
    text_name: str = "job.toml"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. --rounds, --seed
    workflow: Callable[[list[Step]], list[Step]] | None = None  # the app's [task] workflow
    root: tuple[Any, Any] | None = None  # the server's root data set (FLTrust)
    # A run that starts from this job lets go of ``weights`` once its first state holds
    # them, so that a large model is not kept twice for the whole run. ``simulate`` sets it
    # for the job it prepares itself; a prepared job that is run again keeps its model.
    release_initial: bool = False
    # SHA-256 of the job file's bytes (what a job signer signs) and its signature, from
    # ``JOB.sig`` next to it, if signed: both go into the job's manifest.
    file_sha256: str | None = None
    signature: str | None = None

    @property
    def digest(self) -> str:
        """The job file's digest, with any command-line overrides: a resumed run must be
        the same job in every setting."""
        text = self.text
        if self.overrides:
            text += "\n# overrides " + json.dumps(self.overrides, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def prepare_job(path: str | Path) -> PreparedJob:
    """Build the trainer (for the spec and initial weights) and, where the task has a data
    function with a test split and ``central_every > 0``, the central evaluation."""
    from consortia.task import app_hook, build_trainer, load_job_with_app, load_root_data

    path = Path(path)
    cfg = load_job_with_app(path)
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
    workflow = app_hook(cfg.task, base, "workflow")
    root = load_root_data(cfg, base)
    return PreparedJob(
        text,
        cfg,
        trainer,
        spec,
        weights,
        central,
        path,
        workflow=workflow,
        root=root,
        file_sha256=file_digest(path),
        signature=read_signature(path),
    )


@dataclass(frozen=True)
class RunOptions:
    out: Path
    resume: bool = False
    min_sites: int | None = None  # default: the job's strategy.min_sites
    rounds: int | None = None  # default: the job's rounds (or, on resume, the stored total)
    round_retries: int = 3
    status_every_s: float = 10.0
    mode: str = "deployment"
    eligible_sites: int | None = None  # DP's N; simulation knows it, a deployment states it
    seeded: bool = False  # debug/test runs: DP noise and sampling from the job seed
    ledger: bool = True  # the signed ledger (docs/ledger.md); off only to measure its cost
    receipt_deadline_s: float = 30.0
    # Receipts wait in an outbox and may take this share of the run's time (at least one
    # delivery after each round of a second or more; always one before the job ends).
    receipt_budget: float = DEFAULT_BUDGET


@dataclass
class RunResult:
    state: LoopState
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def pack_state(state: LoopState) -> State:
    """The optimiser and aggregator state as one set of named arrays for the checkpoint."""
    out = dict(state.optimizer_state)
    out.update({_AGG_PREFIX + k: v for k, v in state.aggregator_state.items()})
    return out


def unpack_state(round_: int, weights: np.ndarray, arrays: State) -> LoopState:
    opt = {k: v for k, v in arrays.items() if not k.startswith(_AGG_PREFIX)}
    agg = {k[len(_AGG_PREFIX) :]: v for k, v in arrays.items() if k.startswith(_AGG_PREFIX)}
    return LoopState(round_, weights, opt, agg)


def participants(phases: Sequence[PhaseRecord]) -> list[Participant]:
    """Each asked site's outcome in each phase of a round."""
    out: list[Participant] = []
    for phase in phases:
        failed = {f.site: f.reason for f in phase.failures}
        done = set(phase.accepted)
        for site in phase.asked:
            reason = failed.get(site)
            if reason is None and site not in done:
                reason = "no outcome (round aborted)"
            out.append(Participant(site, phase.name, "failed" if reason else "replied", reason))
    return out


class Run:
    """One run of a job: ``run()`` returns the summary also written to summary.json."""

    def __init__(
        self,
        job: PreparedJob,
        options: RunOptions,
        make_fleet: Callable[[str], Fleet],
        *,
        subscribers: Sequence[Subscriber] = (),
        strategy: Strategy | None = None,
        aggregator: Aggregator | None = None,
        steps: Callable[[list[Step]], list[Step]] | None = None,
        summary_extra: Callable[[ServerStore, LoopState], dict[str, Any]] | None = None,
        on_open: Callable[[RunFolder], None] | None = None,
        notices: Sequence[str] = (),
        site_identity: IdentityOf | None = None,
    ) -> None:
        self.job = job
        self.options = options
        self.make_fleet = make_fleet
        self.bus = EventBus(subscribers)
        cfg = job.config
        self.strategy = strategy or strategy_from_config(cfg, options.seeded, aggregator)
        self.edit_steps = steps
        self.summary_extra = summary_extra
        self.on_open = on_open
        self.notices = list(notices)
        # Each site's key, to check its update signatures: given (simulation's run keys)
        # or the fleet's (the certificate a gRPC site authenticated with).
        self.site_identity = site_identity
        self._prov: Provenance | None = None
        self._outbox = ReceiptOutbox(options.receipt_budget)
        self._fleet: Fleet | None = None
        self._admitted_fleet: Fleet | None = None
        self.min_sites = options.min_sites or cfg.strategy.min_sites
        if self.min_sites < 1:
            raise ConfigError(f"--min-sites must be at least 1, got {self.min_sites}")

    # ---- the store ------------------------------------------------------------------------

    def _open(self) -> tuple[ServerStore, RunFolder, LoopState, JobRow, int]:
        out = Path(self.options.out)
        store_path = out / STORE_FILE
        folder = RunFolder(out)
        folder.lock()  # before reading anything: a second server here is refused
        try:
            return self._open_locked(out, store_path, folder)
        except BaseException:
            folder.unlock()
            raise

    def _open_locked(
        self, out: Path, store_path: Path, folder: RunFolder
    ) -> tuple[ServerStore, RunFolder, LoopState, JobRow, int]:
        if not self.options.resume and store_path.exists():
            with ServerStore(store_path) as s:
                old = s.job()
                done = len(s.completed_rounds())
            if old is not None:
                raise StoreError(
                    f"{out} already holds job {old.id!r} ({done} of {old.rounds} rounds "
                    "completed); resume it (--resume), or choose another output folder. "
                    "Nothing was overwritten."
                )
        if self.options.resume and not store_path.exists():
            raise StoreError(f"nothing to resume: {store_path} does not exist")
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
            if job.weights is None:
                raise ConfigError("this prepared job's initial model was released by a run")
            weights = job.weights
            if job.release_initial:
                job.weights = None
            state = LoopState(0, weights, self.strategy.server_optimizer.init(weights))
            rel = "checkpoints/round_0000.safetensors"
            sha, opt_sha = write_checkpoint(
                folder.path / rel, spec, state.weights, pack_state(state)
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
            ledger = self._new_ledger(store, folder, row, sha, opt_sha, model_digest(spec, weights))
            store.create_job(row, ledger)
            folder.write_job(job.text, job.text_name)
            if self.on_open is not None:
                self.on_open(folder)
            return state, row, rounds
        where = job.path or "the job"
        if row.job_digest != job.digest:
            raise StoreError(
                f"the job file {where} changed since job {row.id!r} started (sha256 "
                f"{job.digest[:16]}..., recorded {row.job_digest[:16]}...); resuming would mix "
                "two jobs. Restore the original file or start a new run in another folder."
            )
        if row.spec_digest != spec.digest():
            raise StoreError(
                f"the task's model no longer matches job {row.id!r} (its spec changed); "
                "restore the original task code or start a new run"
            )
        last = store.last_completed()
        if last is None:
            weights, arrays = read_checkpoint(
                folder.path / row.initial_checkpoint,
                spec,
                row.initial_digest,
                row.initial_optimizer_digest,
            )
            state = unpack_state(0, weights, arrays)
        else:
            weights, arrays = read_checkpoint(
                folder.path / last.checkpoint, spec, last.checkpoint_digest, last.optimizer_digest
            )
            if model_digest(spec, weights) != last.model_digest:
                raise StoreError(f"checkpoint of round {last.number} holds another model")
            state = unpack_state(last.number, weights, arrays)
        rounds = self.options.rounds or row.rounds
        if rounds < state.round:
            raise ConfigError(f"--rounds {rounds}: the job already completed {state.round}")
        if rounds != row.rounds:
            store.set_job(rounds=rounds)
        if state.round < rounds:
            store.set_job(status="running")
        self._resume_ledger(store, folder, row, state.round)
        log.info("resuming job %s after round %d of %d", row.id, state.round, rounds)
        return state, row, rounds

    # ---- the ledger -----------------------------------------------------------------------

    def _identity(self, site: str) -> Any:
        if self.site_identity is not None:
            return self.site_identity(site)
        lookup = getattr(self._fleet, "site_identity", None)
        return lookup(site) if lookup is not None else None

    def _statement(self, site: str) -> JoinStatement | None:
        """What ``site`` stated of its policy when it joined (the fleet heard it)."""
        return self._fleet.join_statement(site) if self._fleet is not None else None

    def _new_ledger(
        self,
        store: ServerStore,
        folder: RunFolder,
        row: JobRow,
        sha: str,
        opt_sha: str | None,
        digest: str,
    ) -> list[tuple[str, dict[str, Any]]]:
        """The job's ledger key (made now, for this job only) and its first entries."""
        if not self.options.ledger:
            return []
        for stale in (KEY_FILE, PUBLIC_FILE):  # left by a creation that never committed
            (folder.path / stale).unlink(missing_ok=True)
        key = LedgerKey.create(folder.path)
        store.ledger_sign = key.sign
        self._prov = Provenance(key, row.id, self._identity, self._statement)
        rel = row.initial_checkpoint
        return self._prov.job_created(
            self.job.config,
            job_sha256=row.job_digest,
            spec_digest=row.spec_digest,
            rounds=row.rounds,
            mode=self.options.mode,
            checkpoint=checkpoint_payload(0, rel, sha, _opt_rel(rel), opt_sha, digest),
        )

    def _resume_ledger(
        self, store: ServerStore, folder: RunFolder, row: JobRow, after: int
    ) -> None:
        """A resumed job continues its own chain, signed by its own key."""
        entries = store.ledger()
        if not (folder.path / KEY_FILE).exists() or not self.options.ledger:
            if entries:
                raise LedgerError(
                    f"{folder.path / KEY_FILE} is missing: this job's ledger cannot be continued"
                    if self.options.ledger
                    else "this job keeps a ledger; it cannot be resumed without it"
                )
            return  # a job started without a ledger stays without one
        key = LedgerKey.load(folder.path)
        if not entries or entries[0].data().get("ledger_public_key") != key.public:
            raise LedgerError(
                f"{folder.path / KEY_FILE} is not the key this job's ledger began with"
            )
        store.ledger_sign = key.sign
        self._prov = Provenance(key, row.id, self._identity, self._statement)
        self._prov.load(entries)
        delivered = store.receipts_delivered()
        self._outbox.add(
            (site, r) for site, r in self._prov.receipts(entries) if r.index not in delivered
        )
        store.append([(K.JOB_RESUMED, {"after_round": after})])

    def _send_receipts(
        self, fleet: Fleet, store: ServerStore, entries: Sequence[Entry], final: bool = False
    ) -> None:
        """Put each recorded update's entry in the outbox for its site; deliver what waits
        when it is due, or ``final``ly (best effort: a site that misses its receipt still
        has its own signature, and the run goes on)."""
        if self._prov is None:
            return
        self._outbox.add(self._prov.receipts(entries))
        if not (self._outbox.due() or (final and len(self._outbox))):
            return
        delivered = self._outbox.deliver(fleet, Timing(self.options.receipt_deadline_s))
        with contextlib.suppress(OSError, sqlite3.Error, StoreError):
            store.mark_receipts_delivered(delivered)
        if final and len(self._outbox):
            log.warning(
                "receipts not delivered to %d site(s) before the job ended: %s",
                len(self._outbox.undelivered()),
                ", ".join(printable(s) for s in self._outbox.undelivered()[:10]),
            )

    def _privacy(self, store: ServerStore) -> PrivacyController | None:
        """The job's DP wrapper, with what earlier rounds of this job already spent."""
        cfg = self.job.config
        if cfg.privacy is None:
            return None
        population = self.options.eligible_sites or cfg.privacy.population
        if cfg.poisson_sampling and population is None:
            raise ConfigError(
                "privacy.population: a deployment must state how many sites are eligible "
                "(N, the denominator q*N of DP-FedAvg)"
            )
        seeded = self.options.seeded or cfg.privacy.seeded_noise
        deployed = self.options.mode == "deployment"
        ctl = privacy_from_config(
            cfg, population or self.min_sites, self.job.spec.size, seeded, deployed
        )
        assert ctl is not None
        self.notices.extend(ctl.notices)  # e.g. a min_sites that fails rounds often
        done = store.completed_rounds()
        if done:
            ctl.restore([r.metrics for r in done])
            for r in done:
                for p in store.participants(r.number):
                    if p.phase == "fit" and p.outcome == "replied":
                        ctl.participation[p.site] = ctl.participation.get(p.site, 0) + 1
        return ctl

    # ---- the rounds -----------------------------------------------------------------------

    def run(self) -> RunResult:
        t_start = time.perf_counter()
        # The run's one current state lives here, never also in a local of this frame: a
        # large model's old copy is freed as soon as the next round's model replaces it.
        store, folder, self._state, row, rounds = self._open()
        resumed_from = self._state.round if self.options.resume else None
        history = [r.metrics for r in store.completed_rounds()]
        error: str | None = None
        stopped: str | None = None
        status = "failed"
        fleet: Fleet | None = None
        privacy: PrivacyController | None = None
        summary: dict[str, Any] = {}
        secure_log: SecureAggregationLog | None = None
        try:
            cfg = self.job.config
            privacy = self._privacy(store)
            n_sites = self.options.eligible_sites or self.min_sites
            settings = replace(
                loop_settings(cfg, n_sites), rounds=rounds, seed=cfg.seed, job_id=row.id
            )
            root = None
            if self.job.root is not None and getattr(self.strategy.aggregator, "root_data", None):
                if self.job.trainer is None:
                    raise ConfigError(
                        "strategy.aggregator: the root update needs the task's trainer"
                    )
                root = (self.job.trainer, self.job.root)
            auditor = None
            if cfg.audit is not None:
                thresholds = AuditThresholds(**cfg.audit.thresholds())
                auditor = Auditor(thresholds, self.job.spec.size, cfg.seed)
            fit = None
            if cfg.secure_aggregation is not None:
                from consortia.server.secure_fit import SecureFitStep

                fit = SecureFitStep(
                    self.strategy, cfg.secure_aggregation, privacy, provenance=self._prov
                )
                secure_log = fit.log
                secure_log.restore([r.metrics for r in store.completed_rounds()])
            steps = standard_steps(
                self.strategy,
                settings,
                central_eval=self.job.central,
                privacy=privacy,
                root=root,
                audit=auditor,
                provenance=self._prov,
                fit=fit,
            )
            for edit in (self.job.workflow, self.edit_steps):
                if edit is not None:
                    steps = list(edit(steps))
            workflow = Workflow(self.job.spec, steps, settings)
            fleet = self._fleet = self.make_fleet(row.id)
            shown = history if privacy is None else [public_row(r) for r in history]
            fleet = self._admit(fleet, job_manifest(self.job, row.id, rounds))
            self._admitted_fleet = fleet
            self.bus.publish(
                RunStarted(cfg.name, rounds, self._state.round, shown, str(folder.path))
            )
            for message in self.notices:
                log.warning("%s", message)
                self.bus.publish(Notice(message))
            error, stopped = self._rounds(workflow, fleet, store, folder, rounds)
            status = "failed" if error else ("budget_exhausted" if stopped else "completed")
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted by the operator"
            raise
        finally:
            try:
                workers = fleet.worker_peaks() if fleet is not None else []
                if fleet is not None and status != "interrupted":
                    self._send_receipts(fleet, store, [], final=True)
                if fleet is not None:
                    fleet.end_job(status)
                    fleet.close()
                if status != "interrupted":
                    state = self._state
                    done = (
                        []
                        if self._prov is None
                        else [(K.JOB_FINISHED, {"status": status, "rounds_completed": state.round})]
                    )
                    store.set_job(status=status, ledger=done)
                state = self._state
                summary = self._summary(folder, store, state, rounds, status, error, t_start)
                self._flag_failing_sites(summary, store, state)
                self._flag_audited_sites(summary, store, state)
                summary["policy_refusals"] = policy_refusals(
                    fleet.join_refusals() if fleet is not None else {},
                    [store.participants(r) for r in range(1, state.round + 1)],
                )
                summary["resumed_from_round"] = resumed_from
                summary["peak_memory"] = peak_memory(workers)
                if self.notices:
                    summary["notices"] = self.notices
                secure = (
                    None
                    if secure_log is None or self.job.config.secure_aggregation is None
                    else secure_log.report(self.job.config.secure_aggregation)
                )
                if secure is not None:
                    summary["secure_aggregation"] = secure
                _add_privacy(summary, folder, privacy, stopped, secure)
                if privacy is not None:
                    hide_participation(summary)
                folder.write_summary(summary)
                history = [r.metrics for r in store.completed_rounds()]
            finally:
                store.close()
                folder.unlock()
                self.bus.publish(RunFinished(summary))
        return RunResult(self._state, summary, history)

    def _admitted_sites(self) -> list[str]:
        """The sites admitted to the job now (the ledger's site_joined entries); none once
        the fleet is gone."""
        fleet = self._admitted_fleet
        try:
            return list(fleet.sites()) if fleet is not None else []
        except Exception:  # a closed fleet: the round's own entries still stand
            return []

    def _admit(self, fleet: Fleet, manifest: JobManifest) -> Fleet:
        """Put the job's manifest to the sites; leave out those whose policy refuses it."""
        refused = fleet.admit(manifest, self.job.config.strategy.deadline_s)
        if not refused:
            return fleet
        for site, reason in sorted(refused.items()):
            message = f"site {site} refused to join: {printable(reason)}"
            log.warning("%s", message)
            self.bus.publish(Notice(message))
        return AdmittedFleet(fleet, refused)

    def _wait(self, fleet: Fleet) -> list[str]:
        n = self.min_sites
        waiter = getattr(fleet, "wait_for_sites", None)
        if waiter is None:  # a fleet with a fixed set of sites (debug, pool)
            if len(fleet.sites()) < n:
                raise ConfigError(f"{n} sites needed, the fleet has {len(fleet.sites())}")
            return fleet.sites()
        from consortia.fleet.grpc import SitesTimeoutError

        while True:
            try:
                return list(waiter(n, self.options.status_every_s))
            except SitesTimeoutError:
                self.bus.publish(WaitingForSites(fleet.sites(), n))

    def _rounds(
        self,
        workflow: Workflow,
        fleet: Fleet,
        store: ServerStore,
        folder: RunFolder,
        rounds: int,
    ) -> tuple[str | None, str | None]:
        """Run to the end, keeping ``self._state`` current; return (error, budget stop)."""
        failed_in_a_row = 0
        while self._state.round < rounds:
            rnd = self._state.round + 1
            connected = self._wait(fleet)
            self.bus.publish(RoundStarted(rnd, rounds, connected))
            self._state = replace(self._state, weights=fleet.share(self._state.weights))
            ctxs: list[Any] = []
            try:
                new_state, record = workflow.run_round(self._state, fleet, self.bus.publish, ctxs)
            except BudgetExhausted as exc:
                return None, str(exc)
            except (RoundFailedError, ConfigError) as exc:
                if isinstance(exc, ConfigError) and len(fleet.sites()) >= self.min_sites:
                    raise  # a real configuration error, not sites leaving mid-selection
                failed_in_a_row += 1
                if not self._round_failed(store, rnd, str(exc), ctxs, failed_in_a_row):
                    return str(exc), None
                continue
            del ctxs  # the round's context holds its aggregate and the old model
            try:
                entries = self._commit(folder, store, record, new_state)
            except (OSError, sqlite3.OperationalError) as exc:
                # A full disk, no file descriptors left, the store unwritable: the round is
                # lost (nothing of it was recorded), never the run or the process.
                reason = f"round {rnd} could not be made durable ({exc}); its result is dropped"
                log.error("%s", reason)
                failed_in_a_row += 1
                if not self._round_failed(store, rnd, reason, [record], failed_in_a_row):
                    return reason, None
                continue
            failed_in_a_row = 0
            self._state = new_state
            del new_state
            self._send_receipts(fleet, store, entries or [])
            self.bus.publish(RoundDone(record, self._state, rounds))
        return None, None

    def _round_failed(
        self, store: ServerStore, rnd: int, reason: str, attempt: list[Any], in_a_row: int
    ) -> bool:
        """Record and announce a failed attempt at a round; whether it will be tried again.

        ``attempt`` holds the round's context or record (either has its phases), if any."""
        phases = attempt[0].phases if attempt else []
        ledger = []
        if self._prov is not None:
            audit = getattr(attempt[0], "audit", []) if attempt else []
            ledger = self._prov.round_items(rnd, phases, audit, self._admitted_sites())
            ledger.append((K.ROUND_FAILED, {"round": rnd, "reason": reason[:1000]}))
        with contextlib.suppress(OSError, StoreError):  # the failure may be the disk itself
            store.record_failed_attempt(rnd, reason, participants(phases), ledger)
        retrying = in_a_row <= self.options.round_retries
        self.bus.publish(RoundFailed(rnd, reason, in_a_row, retrying))
        return retrying

    def _commit(
        self, folder: RunFolder, store: ServerStore, record: Any, state: LoopState
    ) -> list[Entry]:
        """Checkpoint files first (fsynced), then the round's row naming their digests, with
        its ledger entries in the same transaction."""
        spec = self.job.spec
        rel = f"checkpoints/round_{state.round:04d}.safetensors"
        digest = model_digest(spec, state.weights)
        model_sha, opt_sha = write_checkpoint(
            folder.path / rel, spec, state.weights, pack_state(state), digest
        )
        row = RoundRow(
            state.round, record.seconds, record.to_json(), rel, model_sha, opt_sha, digest
        )
        ledger = []
        if self._prov is not None:
            cp = checkpoint_payload(state.round, rel, model_sha, _opt_rel(rel), opt_sha, digest)
            ledger = self._prov.round_items(
                state.round, record.phases, record.audit, self._admitted_sites()
            )
            ledger += self._prov.closed(state.round, digest, record.metrics, cp)
        return store.commit_round(row, participants(record.phases), ledger)

    def _flag_audited_sites(
        self, summary: dict[str, Any], store: ServerStore, state: LoopState
    ) -> None:
        """The sites the audit flagged in at least ``audit.site_share`` of the rounds their
        update was accepted in, with those rounds (from the store: a resumed run counts
        the rounds before the restart too)."""
        audit = self.job.config.audit
        if audit is None:
            return
        rounds = [
            (r.number, list(r.metrics.get("flagged_sites", []))) for r in store.completed_rounds()
        ]
        audited: dict[str, int] = {}
        for r in range(1, state.round + 1):
            for p in store.participants(r):
                if p.phase == "fit" and p.outcome == "replied":
                    audited[p.site] = audited.get(p.site, 0) + 1
        summary["audit_flagged"] = flagged_sites(rounds, audited, audit.site_share)

    def _flag_failing_sites(
        self, summary: dict[str, Any], store: ServerStore, state: LoopState
    ) -> None:
        """List the sites that failed; a site that failed every time it was asked makes a
        completed run ``degraded`` (unless the job tolerates it): never silently done."""
        rounds = [store.participants(r) for r in range(1, state.round + 1)]
        failing = failing_sites(rounds)
        if not failing:
            return
        summary["failing_sites"] = failing
        always = sorted(s for s, info in failing.items() if info["failed"] == info["asked"])
        if (
            always
            and summary["status"] == "completed"
            and not self.job.config.strategy.tolerate_failing_sites
        ):
            summary["status"] = "degraded"
            shown = ", ".join(always[:10]) + (" ..." if len(always) > 10 else "")
            summary["degraded"] = (
                f"{len(always)} site(s) failed every time they were asked: {shown} "
                "(strategy.tolerate_failing_sites = true accepts this)"
            )  # the store keeps "completed": the rounds did complete; this is the verdict

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
        row = store.job()
        extra = self.summary_extra(store, state) if self.summary_extra else {}
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
            mode=self.options.mode,
            **extra,
        )


def _opt_rel(rel: str) -> str:
    return rel.replace(".safetensors", ".optimizer.safetensors")


def peak_memory(workers: Sequence[int]) -> dict[str, Any]:
    """The server's peak resident memory and its site workers', in MiB."""
    own = peak_rss_bytes()
    return {
        "unit": "MiB, peak resident set (pages shared between processes count in each)",
        "server": None if own is None else round(own / MIB, 1),
        "site_workers": [round(w / MIB, 1) for w in workers],
    }


MAX_REASONS_PER_SITE = 3


def failing_sites(rounds: Sequence[Sequence[Participant]]) -> dict[str, dict[str, Any]]:
    """Per site that failed at least once in the completed rounds: how often it was asked,
    how often it failed, and its (first few, shortened) reasons with their counts."""
    out: dict[str, dict[str, Any]] = {}
    asked: dict[str, int] = {}
    for participants in rounds:
        for p in participants:
            asked[p.site] = asked.get(p.site, 0) + 1
            if p.outcome != "failed":
                continue
            info = out.setdefault(p.site, {"asked": 0, "failed": 0, "reasons": {}})
            info["failed"] += 1
            reason = (p.reason or "(no reason given)")[:200]
            reasons = info["reasons"]
            if reason in reasons or len(reasons) < MAX_REASONS_PER_SITE:
                reasons[reason] = reasons.get(reason, 0) + 1
    for site, info in out.items():
        info["asked"] = asked[site]
    return out


def policy_refusals(
    join: dict[str, str], rounds: Sequence[Sequence[Participant]]
) -> dict[str, Any]:
    """Sites' policy refusals: who refused to join (and why), and per site how many
    rounds it refused, recognised by the refusal prefix of the reasons sites gave."""
    per_site: dict[str, int] = {}
    for participants in rounds:
        for p in participants:
            if p.outcome == "failed" and p.reason and is_policy_refusal(p.reason):
                per_site[p.site] = per_site.get(p.site, 0) + 1
    return {
        "joins_refused": len(join),
        "rounds_refused": sum(per_site.values()),
        "join": {site: printable(reason, 300) for site, reason in sorted(join.items())},
        "rounds": dict(sorted(per_site.items())),
    }


def site_names(store: ServerStore, state: LoopState) -> list[str]:
    """Every site that took part in a completed round, sorted."""
    return sorted({p.site for r in range(1, state.round + 1) for p in store.participants(r)})


def hide_participation(summary: dict[str, Any]) -> None:
    """Under DP, summary.json says neither who took part nor how many: failure counts and
    the sites that failed or were flagged stay in the server's store (consortia.db)."""
    for key in ("failures", "failing_sites", "audit_flagged"):
        summary.pop(key, None)
    refusals = summary.get("policy_refusals")
    if isinstance(refusals, dict):
        # A site that refused a round was sampled for it: per-site counts (and their
        # total) would publish the sampling outcome. Refusals to join happen before any
        # round is sampled, so they stay.
        refusals.pop("rounds", None)
        refusals.pop("rounds_refused", None)
    if "degraded" in summary:
        summary["degraded"] = (
            "some site(s) failed every time they were asked; under DP the published "
            "summary does not name them or say how many: the server's store does"
        )


def _add_privacy(
    summary: dict[str, Any],
    folder: RunFolder,
    privacy: PrivacyController | None,
    stopped: str | None,
    secure: dict[str, Any] | None = None,
) -> None:
    """Write privacy.json and put its headline (and any budget stop) in the summary."""
    if privacy is not None:
        report = privacy.report()
        report["secure_aggregation"] = secure or {"enabled": False}
        folder.write_privacy(report)
        folder.write_site_reports(privacy.site_reports())
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
        out["epsilon_max_over_sites"] = report["epsilon_max_over_sites"]
    if report["budget"]["stopped"]:
        out["stopped"] = report["budget"]["stopped"]
    return out
