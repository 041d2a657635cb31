"""The kinds of ledger entries, and what each one's payload holds (docs/ledger.md)."""

from __future__ import annotations

JOB_CREATED = "job_created"  # job_id, job_sha256, strategy, privacy, ..., ledger_public_key
JOB_RESUMED = "job_resumed"  # after_round
SITE_JOINED = "site_joined"  # site, key_type, public_key, certificate_serial, policy, dua
ROUND_OPENED = "round_opened"  # round, attempt, sites_asked (a number: never who under DP)
UPDATE_RECEIVED = "update_received"  # round, site, update_sha256, signature, bytes, ...
UPDATE_REFUSED = "update_refused"  # round, site, reason, update_sha256 (if it arrived)
SITE_REFUSED = "site_refused"  # round, site, reason (the site's own policy said no)
SITE_FAILED = "site_failed"  # round, site, reason (no reply, an error, the deadline)
ROUND_CLOSED = "round_closed"  # round, aggregate_sha256, model_digest, epsilon
ROUND_FAILED = "round_failed"  # round, reason
CHECKPOINT_WRITTEN = "checkpoint_written"  # round, path, sha256, optimizer_*, model_digest
JOB_FINISHED = "job_finished"  # status, rounds_completed

KINDS = (
    JOB_CREATED,
    JOB_RESUMED,
    SITE_JOINED,
    ROUND_OPENED,
    UPDATE_RECEIVED,
    UPDATE_REFUSED,
    SITE_REFUSED,
    SITE_FAILED,
    ROUND_CLOSED,
    ROUND_FAILED,
    CHECKPOINT_WRITTEN,
    JOB_FINISHED,
)
