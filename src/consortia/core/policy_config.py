"""A site's policy file (TOML), and a job's ``[simulation.site_policy]``: the same keys.

Validated like the job file (unknown keys refused by name, errors naming the field), so
a misspelt rule is an error rather than a rule silently not applied. What each rule
means, and where it is checked, is in ``consortia.client.policy``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataUseAgreementConfig(_Strict):
    """The agreement under which the site's data may be used; the site takes part only
    until ``expires`` (a TOML date, e.g. 2026-12-31; the last day it holds)."""

    reference: str = Field(min_length=1, max_length=200)
    purpose: str = Field(min_length=1, max_length=1000)
    parties: list[str] = Field(min_length=1, max_length=64)
    expires: dt.date


class SitePolicyConfig(_Strict):
    max_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    require_privacy: bool = False
    accepted_job_digests: list[str] = Field(
        default_factory=list,
        description="SHA-256 (hex) of job files this site accepts",
    )
    accepted_job_signers: list[str] = Field(
        default_factory=list,
        description="base64 Ed25519 public keys (`consortia keys new-signer`) whose signed "
        "jobs this site accepts",
    )
    allowed_strategies: list[str] | None = None
    allowed_aggregators: list[str] | None = None
    require_secure_aggregation: bool = False
    min_sites_per_round: int | None = Field(None, ge=1)
    data_use_agreement: DataUseAgreementConfig | None = None

    @field_validator("accepted_job_digests")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        for d in value:
            if not _HEX64.match(d):
                raise ValueError(f"{d[:80]!r} is not a SHA-256 digest (64 lowercase hex digits)")
        return value

    @field_validator("accepted_job_signers")
    @classmethod
    def _signers(cls, value: list[str]) -> list[str]:
        for k in value:
            try:
                raw = base64.b64decode(k, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"{k[:80]!r} is not an Ed25519 public key (base64 of 32 bytes, as in "
                    "the NAME.pub file `consortia keys new-signer` writes)"
                )
        return value
