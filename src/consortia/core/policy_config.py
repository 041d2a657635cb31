"""A site's policy file (TOML), and a job's ``[simulation.site_policy]``: the same keys.

Validated like the job file (unknown keys refused by name, errors naming the field), so
a misspelt rule is an error rather than a rule silently not applied. What each rule
means, and where it is checked, is in ``consortia.client.policy``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_PARTY_CHARS = 200
MAX_PARTIES = 64


def is_sha256_hex(text: str) -> bool:
    """Whether ``text`` is a SHA-256 digest as this project writes them: 64 lowercase hex."""
    return bool(_HEX64.match(text))


def _plain_text(value: str, multiline: bool = False) -> str:
    """Text that a ledger entry and a report can carry as it is: no control characters
    (a line break or tab only where ``multiline``) and no lone surrogates, which no UTF-8
    encoder accepts. A site's agreement travels to the server, so its text is held to
    this in the policy file already, not only when it arrives."""
    for ch in value:
        cat = unicodedata.category(ch)
        if cat == "Cs" or (cat == "Cc" and not (multiline and ch in "\n\t")):
            raise ValueError(f"contains the control character U+{ord(ch):04X}")
    return value


def _line(value: str) -> str:
    return _plain_text(value)


def _paragraph(value: str) -> str:
    return _plain_text(value, multiline=True)


Line = Annotated[str, AfterValidator(_line)]
Party = Annotated[str, Field(min_length=1, max_length=MAX_PARTY_CHARS), AfterValidator(_line)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataUseAgreementConfig(_Strict):
    """The agreement under which the site's data may be used; the site takes part only
    until ``expires`` (a TOML date, e.g. 2026-12-31; the last day it holds)."""

    reference: Line = Field(min_length=1, max_length=200)
    purpose: Annotated[str, AfterValidator(_paragraph)] = Field(min_length=1, max_length=1000)
    parties: list[Party] = Field(min_length=1, max_length=MAX_PARTIES)
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
            if not is_sha256_hex(d):
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


def policy_digest(policy: SitePolicyConfig) -> str:
    """The policy's SHA-256 as a site states it when it joins a job (docs/deployment.md).

    Of the validated policy, not of the file's bytes: SHA-256 of the UTF-8 canonical JSON
    (keys sorted, no whitespace, non-ASCII as is) of every key with its value, defaults
    filled in, the agreement's expiry as ``YYYY-MM-DD``. So a comment, the order of keys
    or a default written out does not change it, and a job's ``[simulation.site_policy]``
    and a ``--policy`` file with the same rules give the same digest.
    """
    text = json.dumps(
        policy.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()
