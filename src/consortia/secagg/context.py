"""The round a secure-aggregation value belongs to, and the error secure aggregation raises.

Every key, mask and ciphertext is bound to (job, round) so that nothing derived for one
round can be replayed in another: the binding is a canonical byte string, built here once so
that every module derives the same bytes for the same round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from consortia.core.errors import ConsortiaError

_MAX_SITE_ID = (1 << 63) - 1


class SecAggError(ConsortiaError):
    """Secure-aggregation input is malformed, inconsistent, or fails authentication."""


def check_site_id(site_id: object, what: str = "site id") -> int:
    """A site id is a non-negative int (not a bool): it orders pairs and signs masks."""
    if isinstance(site_id, bool) or not isinstance(site_id, int):
        raise SecAggError(f"{what} must be an int, got {type(site_id).__name__}")
    if not 0 <= site_id <= _MAX_SITE_ID:
        raise SecAggError(f"{what} must be in [0, 2**63), got {site_id}")
    return site_id


def encode_parts(*parts: bytes | str | int) -> bytes:
    """Length-prefixed concatenation: distinct tuples of parts never give the same bytes."""
    out = bytearray()
    for part in parts:
        if isinstance(part, int):
            raw = part.to_bytes(8, "big", signed=False)
        elif isinstance(part, str):
            raw = part.encode("utf-8")
        else:
            raw = bytes(part)
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


@dataclass(frozen=True)
class RoundContext:
    """The job and round every secure-aggregation value of one round is bound to."""

    job: str
    round: int

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not self.job:
            raise SecAggError(f"job must be a non-empty string, got {self.job!r}")
        if len(self.job.encode("utf-8")) > 256:
            raise SecAggError("job must be at most 256 bytes of UTF-8")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise SecAggError(f"round must be an int >= 0, got {self.round!r}")
        if self.round > _MAX_SITE_ID:
            raise SecAggError(f"round must be below 2**63, got {self.round}")

    def label(self, purpose: str, *ids: int) -> bytes:
        """Domain-separation bytes for ``purpose`` between the given sites in this round:
        ``encode_parts("consortia.secagg/v1", purpose, job, round, *ids)``, with the part
        before the ids built once per (job, round, purpose) (a site derives ~4k labels a
        round at k = 22)."""
        return _label_prefix(self.job, self.round, purpose) + b"".join(
            _ID_HEADER + check_site_id(i).to_bytes(8, "big") for i in ids
        )


_ID_HEADER = (8).to_bytes(4, "big")  # encode_parts' length prefix of an int part


@functools.lru_cache(maxsize=64)
def _label_prefix(job: str, round_: int, purpose: str) -> bytes:
    return encode_parts("consortia.secagg/v1", purpose, job, round_)
