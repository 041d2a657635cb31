"""The ``join`` message kind: the job's manifest, put to a site before any round.

Over gRPC the manifest arrives in the Welcome and the client hands it to its site app as
this message; in simulation the run driver sends it through the fleet. Either way the
site's own middleware (its policy) answers it, so the same rules refuse the same jobs in
simulation and in deployment. A refusal is an error whose reason starts with
``POLICY_REFUSAL_PREFIX``. A site that joins says so, and a site with a policy states it:
the policy's digest and its data-use agreement, which the server records in the ledger's
``site_joined`` entry. What a site states is hostile input: ``join_statement`` checks it
(digest format, the agreement's schema and text limits) before the server keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from consortia.core.manifest import MAX_MANIFEST_CHARS
from consortia.core.messages import register_kind
from consortia.core.payload import InvalidMessageError
from consortia.core.policy_config import MAX_PARTIES, DataUseAgreementConfig, is_sha256_hex


@dataclass(frozen=True)
class JoinIns:
    """Server -> site: the job's manifest (canonical JSON; empty: none declared)."""

    round: int
    manifest: str


@dataclass(frozen=True)
class AgreementStatement:
    """A data-use agreement as it travels: the wire carries no lists, so ``parties`` is
    ``{"0": first, "1": second, ...}``; ``expires`` is ``YYYY-MM-DD``."""

    reference: str
    purpose: str
    expires: str
    parties: dict[str, str]

    @classmethod
    def of(cls, dua: DataUseAgreementConfig) -> AgreementStatement:
        parties = {str(i): p for i, p in enumerate(dua.parties)}
        return cls(dua.reference, dua.purpose, dua.expires.isoformat(), parties)


@dataclass(frozen=True)
class JoinRes:
    """Site -> server: joined. ``policy_sha256`` (see ``policy_digest``) and ``agreement``
    are the site's statement of its policy; both None for a site without one."""

    site: str
    round: int
    policy_sha256: str | None = None
    agreement: AgreementStatement | None = None


@dataclass(frozen=True)
class JoinStatement:
    """What the server keeps of a site's statement, once checked."""

    policy_sha256: str
    dua: DataUseAgreementConfig | None

    def to_json(self) -> dict[str, Any]:
        """The site_joined entry's ``policy_sha256`` and ``dua`` fields."""
        return {
            "policy_sha256": self.policy_sha256,
            "dua": None if self.dua is None else self.dua.model_dump(mode="json"),
        }


NO_STATEMENT: dict[str, Any] = {"policy_sha256": None, "dua": None}


def statement_json(statement: JoinStatement | None) -> dict[str, Any]:
    return dict(NO_STATEMENT) if statement is None else statement.to_json()


def join_statement(res: JoinRes) -> JoinStatement | None:
    """The checked statement in a site's join reply (None: the site has no policy).

    Raises ``InvalidMessageError`` naming what is wrong, never quoting the site's text at
    length: a digest that is not 64 lowercase hex digits, an agreement without a digest,
    or an agreement that the policy file's own schema refuses (lengths, control
    characters, an impossible date, parties not numbered 0, 1, 2, ...).
    """
    digest, agreement = res.policy_sha256, res.agreement
    if digest is None:
        if agreement is not None:
            raise InvalidMessageError("a data-use agreement without its policy's digest")
        return None
    if not is_sha256_hex(digest):
        raise InvalidMessageError(
            f"policy_sha256 of {len(digest)} characters is not a SHA-256 digest "
            "(64 lowercase hex digits)"
        )
    if agreement is None:
        return JoinStatement(digest, None)
    parties = agreement.parties
    if len(parties) > MAX_PARTIES or set(parties) != {str(i) for i in range(len(parties))}:
        raise InvalidMessageError(
            f"the agreement's parties must be numbered 0 to n-1 with n <= {MAX_PARTIES}"
        )
    try:
        dua = DataUseAgreementConfig.model_validate(
            {
                "reference": agreement.reference,
                "purpose": agreement.purpose,
                "parties": [parties[str(i)] for i in range(len(parties))],
                "expires": agreement.expires,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise InvalidMessageError(f"the data-use agreement is invalid ({problems})") from None
    return JoinStatement(digest, dua)


def _check_join_request(ins: JoinIns) -> None:
    if ins.round != 0:
        raise InvalidMessageError(f"a join message belongs to round 0, not {ins.round}")
    if len(ins.manifest) > MAX_MANIFEST_CHARS:
        raise InvalidMessageError(f"job manifest of {len(ins.manifest)} characters is too long")


JOIN = register_kind(
    "join", JoinIns, JoinRes, reply_arrays=lambda req: {}, check_request=_check_join_request
)
