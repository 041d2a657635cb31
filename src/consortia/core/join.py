"""The ``join`` message kind: the job's manifest, put to a site before any round.

Over gRPC the manifest arrives in the Welcome and the client hands it to its site app as
this message; in simulation the run driver sends it through the fleet. Either way the
site's own middleware (its policy) answers it, so the same rules refuse the same jobs in
simulation and in deployment. The reply says only that the site joined: a refusal is an
error whose reason starts with ``POLICY_REFUSAL_PREFIX``.
"""

from __future__ import annotations

from dataclasses import dataclass

from consortia.core.manifest import MAX_MANIFEST_CHARS
from consortia.core.messages import register_kind
from consortia.core.payload import InvalidMessageError


@dataclass(frozen=True)
class JoinIns:
    """Server -> site: the job's manifest (canonical JSON; empty: none declared)."""

    round: int
    manifest: str


@dataclass(frozen=True)
class JoinRes:
    site: str
    round: int


def _check_join_request(ins: JoinIns) -> None:
    if ins.round != 0:
        raise InvalidMessageError(f"a join message belongs to round 0, not {ins.round}")
    if len(ins.manifest) > MAX_MANIFEST_CHARS:
        raise InvalidMessageError(f"job manifest of {len(ins.manifest)} characters is too long")


JOIN = register_kind(
    "join", JoinIns, JoinRes, reply_arrays=lambda req: {}, check_request=_check_join_request
)
