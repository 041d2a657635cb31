"""The job manifest: what the server declares about a job, which a site's policy checks.

A site decides whether to join from this declaration alone, before any of the job's
rounds run; each round's own instructions are then checked against it again. The
manifest travels as canonical JSON (sorted keys, no spaces), so that its SHA-256 digest
is the same wherever it is computed, and it is parsed with the same strictness as
anything else from the network: a size limit first, then unknown keys refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consortia.core.payload import InvalidMessageError

# A manifest holds a few dozen settings; anything longer is not one.
MAX_MANIFEST_CHARS = 16_384
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestPrivacy(_Frozen):
    """The job's differential privacy, as declared (None in the manifest: no DP)."""

    mode: Literal["central", "distributed", "local"]
    delta: float = Field(gt=0, lt=1)
    target_epsilon: float | None = Field(None, gt=0)
    epsilon_limit: float | None = Field(None, gt=0)
    noise_multiplier: float | None = Field(None, ge=0)
    sample_rate: float | None = Field(None, gt=0, le=1)
    clip_norm: float | None = Field(None, gt=0)
    min_sites: int | None = Field(None, ge=1)


class JobManifest(_Frozen):
    """Everything a site's policy may judge a job by. ``job_digest`` is the SHA-256 of the
    job file's bytes; ``job_signature`` (base64) is a job signer's Ed25519 signature over
    that digest's 32 bytes, when the job was signed (``consortia keys sign-job``)."""

    job_name: str = Field(min_length=1, max_length=256)
    job_id: str = Field(min_length=1, max_length=256)
    job_digest: str = Field(pattern=_HEX64.pattern)
    strategy: str = Field(min_length=1, max_length=128)
    aggregator: str = Field(min_length=1, max_length=128)
    aggregator_options: dict[str, int | float | bool | str | list[str]] = Field(
        default_factory=dict, max_length=64
    )
    validation: dict[str, int | float | None] = Field(default_factory=dict, max_length=64)
    privacy: ManifestPrivacy | None = None
    secure_aggregation: bool = False
    min_sites: int = Field(ge=1)
    sites_per_round: int | None = Field(None, ge=1)
    rounds: int = Field(ge=1)
    job_signature: str | None = Field(None, max_length=128)

    def to_json(self) -> str:
        """Canonical JSON: the bytes that travel and that the digest is taken over."""
        return canonical_json(self.model_dump(mode="json"))

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def canonical_json(data: Any, default: Any = None) -> str:
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=default
    )


def parse_manifest(text: str) -> JobManifest:
    """A manifest received from the server: hostile until checked (size, then schema)."""
    if len(text) > MAX_MANIFEST_CHARS:
        raise InvalidMessageError(
            f"job manifest of {len(text)} characters is over the limit of {MAX_MANIFEST_CHARS}"
        )
    try:
        return JobManifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InvalidMessageError(
            f"job manifest is invalid ({exc.error_count()} error(s); first: "
            f"{printable(where, 64)}: {first['msg']})"
        ) from None


def printable(text: str, limit: int = 500) -> str:
    """``text`` from a peer made safe for a console or a log line: shortened to ``limit``
    characters, control and format characters (terminal escapes, bidi overrides,
    newlines that forge log lines) written as backslash-u escapes with four hex digits."""
    out = []
    for ch in text[:limit]:
        if unicodedata.category(ch)[0] in ("C", "Z") and ch != " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(text) > limit else "")


# A site's policy refusal begins with this, wherever it travels (an error reply before a
# round, a Refusal at welcome, a Failure in simulation): the server and its records
# recognise a refusal by it, and tell it apart from a site whose code failed.
POLICY_REFUSAL_PREFIX = "site policy: "


def is_policy_refusal(reason: str) -> bool:
    """Whether a failure's reason is a site's policy refusal (possibly behind a
    transport's own prefix, e.g. ``site reported: ``)."""
    return POLICY_REFUSAL_PREFIX in reason[:64]
