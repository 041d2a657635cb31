"""A real deployment's server: a job file, a fleet of sites that connect over gRPC, and the
run driver with the run folder's recorders subscribed.

The same job file as in simulation (its ``[simulation]`` section is not used: real sites
bring their own data). See ``consortia.server.run`` for waiting, retries, durability and
resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from consortia.core.errors import RoundFailedError
from consortia.core.events import RoundDone, RoundFailed, RoundStarted, Subscriber, WaitingForSites
from consortia.fleet.base import Fleet
from consortia.monitor.metrics import AuditFile, MetricsFile, TensorBoardWriter
from consortia.server.run import PreparedJob, Run, RunOptions, prepare_job, site_names
from consortia.server.store import ServerStore

__all__ = ["DeployOptions", "Deployment", "LogReporter", "prepare_job"]

log = logging.getLogger(__name__)


# A deployment's options are the run driver's (mode "deployment" by default).
DeployOptions = RunOptions


class LogReporter:
    """Round progress to the log (the CLI prints richer lines; tests may ignore it)."""

    def __call__(self, event: Any) -> None:
        if isinstance(event, WaitingForSites):
            log.info("waiting for sites: %d of %d connected", len(event.connected), event.needed)
        elif isinstance(event, RoundStarted):
            log.info(
                "round %d/%d starting with %d sites",
                event.round,
                event.rounds,
                len(event.connected),
            )
        elif isinstance(event, RoundDone):
            log.info(
                "round %d/%d done in %.2f s", event.record.round, event.rounds, event.record.seconds
            )
        elif isinstance(event, RoundFailed):
            log.warning("round %d attempt %d failed: %s", event.round, event.attempt, event.error)


def _sites(store: ServerStore, state: Any) -> dict[str, Any]:
    names = site_names(store, state)
    return {"sites": len(names), "site_names": names}


class Deployment:
    """One server run of a job; ``run()`` returns the summary written to summary.json."""

    def __init__(
        self,
        job: PreparedJob,
        options: DeployOptions,
        make_fleet: Callable[[str], Fleet],
        reporter: Subscriber | None = None,
        subscribers: Sequence[Subscriber] = (),
    ) -> None:
        self.options = options
        self._run = Run(
            job,
            replace(options, seeded=bool(job.config.privacy and job.config.privacy.seeded_noise)),
            make_fleet,
            subscribers=[
                MetricsFile(),
                AuditFile(),
                TensorBoardWriter(),
                reporter or LogReporter(),
                *subscribers,
            ],
            summary_extra=_sites,
        )

    def run(self) -> dict[str, Any]:
        result = self._run.run()
        summary = result.summary
        if summary.get("status") == "failed":
            raise RoundFailedError(
                f"{summary.get('error')}; the last good model (round {result.state.round}) is in "
                f"{summary['run_dir']}; fix the cause and continue with --resume"
            )
        return summary
