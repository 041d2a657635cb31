"""The job manifest a server declares, built from the prepared job: one function, used
by deployment (sent in each site's Welcome) and simulation (sent as a ``join`` message)
alike, so a site's policy judges the same declaration wherever it runs."""

from __future__ import annotations

import hashlib
from typing import Protocol

from consortia.core.config import JobConfig
from consortia.core.manifest import JobManifest, ManifestPrivacy


class PreparedJobLike(Protocol):
    """What of a prepared job (``server.run.PreparedJob``) the manifest is made from."""

    text: str
    config: JobConfig
    file_sha256: str | None
    signature: str | None


def job_manifest(job: PreparedJobLike, job_id: str, rounds: int | None = None) -> JobManifest:
    """What the server declares about ``job`` as job ``job_id`` (``rounds``: the run's
    number of rounds where the command line changed it)."""
    cfg = job.config
    s = cfg.strategy
    privacy = None
    if cfg.privacy is not None:
        p = cfg.privacy
        privacy = ManifestPrivacy(
            mode=p.mode,
            delta=p.delta,
            target_epsilon=p.target_epsilon,
            epsilon_limit=p.epsilon_limit,
            noise_multiplier=p.noise_multiplier,
            sample_rate=p.sample_rate,
            clip_norm=p.clip_norm,
            min_sites=p.min_sites,
        )
    digest = job.file_sha256 or hashlib.sha256(job.text.encode()).hexdigest()
    return JobManifest(
        job_name=cfg.name,
        job_id=job_id,
        job_digest=digest,
        strategy=s.preset,
        aggregator=s.aggregator,
        aggregator_options=dict(s.aggregator_options),
        validation=s.validation.model_dump(),
        privacy=privacy,
        secure_aggregation=cfg.secure_aggregation is not None,
        min_sites=s.min_sites,
        sites_per_round=s.sites_per_round,
        rounds=rounds or cfg.rounds,
        job_signature=job.signature,
    )
