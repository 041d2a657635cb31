"""A site's statement of its policy over gRPC: the Welcome is the join request, and the
site's ``join`` reply (request 0) carries its policy digest and data-use agreement. A
statement the server cannot check is refused or dropped with a logged reason and the
site is on record as stating nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_site_helpers import SiteStarter, make_site, wait_for
from test_grpc_hostile import RawSite

from consortia.client.policy import DataUseAgreement, SitePolicy
from consortia.core.join import AgreementStatement, JoinRes
from consortia.core.manifest import JobManifest
from consortia.core.messages import FitIns, TrainSettings, encode
from consortia.fleet.base import Reply, Timing
from consortia.fleet.grpc import GrpcFleet, codec
from consortia.fleet.grpc import federation_pb2 as pb

DUA = DataUseAgreement(
    "DUA-2025-017", "sepsis model", ("hospital-a", "uni-b"), dt.date(2099, 6, 30)
)
DIGEST = "ab" * 32


def _declare(fleet: GrpcFleet) -> None:
    fleet.admit(
        JobManifest(
            job_name="toy",
            job_id="job-1",
            job_digest=DIGEST,
            strategy="fedavg",
            aggregator="weighted_mean",
            min_sites=1,
            rounds=1,
        ),
        5,
    )


def test_a_site_states_its_policy_at_the_welcome_and_one_without_states_nothing(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    _declare(fleet)
    with_policy, without = make_site("site-a"), make_site("site-b")
    with_policy.policy = SitePolicy(min_sites_per_round=1, data_use_agreement=DUA)
    start_site(fleet, with_policy)
    start_site(fleet, without)
    fleet.wait_for_sites(2, timeout=5)
    assert wait_for(lambda: fleet.join_statement("site-a") is not None)
    stated = fleet.join_statement("site-a")
    assert stated is not None
    assert stated.to_json() == {
        "policy_sha256": with_policy.policy.digest(),
        "dua": {
            "reference": "DUA-2025-017",
            "purpose": "sepsis model",
            "parties": ["hospital-a", "uni-b"],
            "expires": "2099-06-30",
        },
    }
    # A site's join reply comes before anything else it sends on its stream: once site-b
    # has answered a round, its join (stating nothing) has been heard.
    ins = FitIns(1, np.zeros(4, np.float32), TrainSettings(), 0, sites=2)
    (answer,) = fleet.send([("site-b", ins)], Timing(5))
    assert isinstance(answer, Reply)
    assert fleet.join_statement("site-b") is None
    assert fleet.refusal_count == 0, list(fleet.refusals)


def _join_reply(payload: pb.Payload, **binding: Any) -> pb.SiteMessage:
    b = pb.Binding(job_id="job-1", round=0, request_id=codec.WELCOME_REQUEST_ID, kind="join")
    for k, v in binding.items():
        setattr(b, k, v)
    return pb.SiteMessage(reply=pb.Reply(binding=b, payload=payload))


def _statement(**agreement: Any) -> pb.Payload:
    """A well-formed statement's body, with the agreement's fields replaced."""
    fields = dict(
        reference="DUA-1", purpose="toy", expires="2099-01-01", parties={"0": "a", "1": "b"}
    )
    fields.update(agreement)
    res = JoinRes("hostile", 0, DIGEST, AgreementStatement(**fields))
    body, _ = codec.payload_to_pb(encode(res), 2**20)
    return body


def _edited(edit: Callable[[pb.Payload], None]) -> pb.Payload:
    body = _statement()
    edit(body)
    return body


def _scalar(name: str, value: pb.Scalar) -> Callable[[pb.Payload], None]:
    def edit(p: pb.Payload) -> None:
        p.scalars[name].CopyFrom(value)

    return edit


HOSTILE: dict[str, tuple[Callable[[], pb.SiteMessage], str]] = {
    "digest not hex": (
        lambda: _join_reply(_edited(_scalar("policy_sha256", pb.Scalar(text="zz" * 32)))),
        "policy_sha256 of 64 characters is not a SHA-256 digest",
    ),
    "digest too short": (
        lambda: _join_reply(_edited(_scalar("policy_sha256", pb.Scalar(text="ab")))),
        "policy_sha256 of 2 characters is not a SHA-256 digest",
    ),
    "digest not text": (
        lambda: _join_reply(_edited(_scalar("policy_sha256", pb.Scalar(integer=7)))),
        "policy_sha256 must be str",
    ),
    "agreement without digest": (
        lambda: _join_reply(_edited(lambda p: p.scalars.pop("policy_sha256"))),
        "a data-use agreement without its policy's digest",
    ),
    "purpose over the schema's limit": (
        lambda: _join_reply(_statement(purpose="p" * 1001)),
        "purpose: String should have at most 1000 characters",
    ),
    "text over the wire's limit": (
        lambda: _join_reply(_statement(purpose="p" * (codec.MAX_TEXT_CHARS + 1))),
        f"agreement.purpose: text of {codec.MAX_TEXT_CHARS + 1} characters is too long",
    ),
    "control character": (
        lambda: _join_reply(_statement(reference="DUA\x1b[2J")),
        "reference: Value error, contains the control character U+001B",
    ),
    "impossible date": (
        lambda: _join_reply(_statement(expires="2099-02-30")),
        "expires:",
    ),
    "parties not numbered": (
        lambda: _join_reply(_statement(parties={"0": "a", "7": "b"})),
        "parties must be numbered 0 to n-1",
    ),
    "too many parties": (
        lambda: _join_reply(_statement(parties={str(i): "a" for i in range(65)})),
        "parties must be numbered 0 to n-1 with n <= 64",
    ),
    "no parties": (
        lambda: _join_reply(
            _edited(
                lambda p: [
                    p.scalars.pop(k) for k in list(p.scalars) if k.startswith("agreement.parties")
                ]
            )
        ),
        "parties: List should have at least 1 item",
    ),
    "unknown field": (
        lambda: _join_reply(_edited(_scalar("agreement.signed_by", pb.Scalar(text="x")))),
        "unknown fields: 'agreement.signed_by'",
    ),
    "an array": (
        lambda: _join_reply(
            _edited(
                lambda p: p.arrays.append(
                    pb.ArrayInfo(name="x", length=1, dtype=pb.DTYPE_FLOAT32, num_chunks=1)
                )
            )
        ),
        "join reply announces arrays [x (1 float32)]; expected [none]",
    ),
    "wrong kind for request 0": (
        lambda: _join_reply(_statement(), kind="fit"),
        "binding says round 0 'fit'",
    ),
}


@pytest.fixture()
def raw(fleet: GrpcFleet, pki: Path) -> Iterator[RawSite]:
    _declare(fleet)
    r = RawSite(fleet, pki / "sites" / "hostile")
    yield r
    r.close()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_statement_the_server_cannot_check_is_refused_and_logged(
    fleet: GrpcFleet, raw: RawSite, case: str
) -> None:
    make, why = HOSTILE[case]
    raw.send(make())
    assert wait_for(lambda: fleet.refusal_count >= 1), case
    (reason,) = [r for _, r in fleet.refusals]
    assert why in reason, reason
    assert fleet.join_statement("hostile") is None
    # the server keeps serving the site: it is still connected, and request 0 is spent
    raw.send(_join_reply(_statement()))
    assert wait_for(lambda: fleet.refusal_count >= 2)
    assert fleet.join_statement("hostile") is None
    assert fleet.sites() == ["hostile"]


def test_a_valid_statement_is_kept_once_and_a_second_is_refused(
    fleet: GrpcFleet, raw: RawSite
) -> None:
    raw.send(_join_reply(_statement()))
    assert wait_for(lambda: fleet.join_statement("hostile") is not None)
    stated = fleet.join_statement("hostile")
    assert stated is not None and stated.policy_sha256 == DIGEST
    assert stated.dua is not None and stated.dua.parties == ["a", "b"]
    raw.send(_join_reply(_statement(reference="DUA-other")))
    assert wait_for(lambda: fleet.refusal_count >= 1)
    assert "second reply for round 0 'join'" in fleet.refusals[-1][1]
    again = fleet.join_statement("hostile")
    assert again is not None and again.dua is not None and again.dua.reference == "DUA-1"
