"""A site's policy over gRPC: the manifest travels in the Welcome, a refusing site says
why and leaves (``SiteRefusedJob``), the server records it; before a round, a refusal is
an error reply that starts with the policy prefix."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_site_helpers import AddTrainer, SiteStarter, make_site

from consortia.client import runtime
from consortia.client.policy import DataUseAgreement, SitePolicy
from consortia.core.manifest import JobManifest
from consortia.core.messages import FitIns, FitRes, TrainSettings
from consortia.fleet.base import Failure, Reply, Timing
from consortia.fleet.grpc import GrpcFleet, run_site
from consortia.fleet.grpc.client import SiteRefusedJob
from consortia.security.signing import new_signer

DIGEST = "ab" * 32
TODAY = dt.date.today()


def _manifest(**kw: Any) -> JobManifest:
    base: dict[str, Any] = dict(
        job_name="toy",
        job_id="job-1",
        job_digest=DIGEST,
        strategy="fedavg",
        aggregator="weighted_mean",
        min_sites=2,
        rounds=3,
    )
    return JobManifest(**{**base, **kw})


def _until(cond: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _signer(tmp_path: Path) -> str:
    return new_signer(tmp_path, "other")[1].read_text().strip()


CASES = {
    "wrong digest": (
        lambda t: SitePolicy(accepted_job_digests=("cd" * 32,)),
        "accepted_job_digests",
    ),
    "unsigned": (lambda t: SitePolicy(accepted_job_signers=(_signer(t),)), "accepted_job_signers"),
    "aggregator": (lambda t: SitePolicy(allowed_aggregators=("krum",)), "allowed_aggregators"),
    "secure aggregation": (
        lambda t: SitePolicy(require_secure_aggregation=True),
        "require_secure_aggregation",
    ),
    "expired agreement": (
        lambda t: SitePolicy(
            data_use_agreement=DataUseAgreement(
                "DUA-1", "toy", ("a",), TODAY - dt.timedelta(days=1)
            )
        ),
        "data_use_agreement",
    ),
    "min sites": (lambda t: SitePolicy(min_sites_per_round=3), "min_sites_per_round"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_site_refuses_to_join_and_the_server_records_why(
    fleet: GrpcFleet, pki: Path, tmp_path: Path, case: str
) -> None:
    make_policy, rule = CASES[case]
    fleet.admit(_manifest(), 5)
    site = make_site("site-a")
    site.policy = make_policy(tmp_path)
    with pytest.raises(SiteRefusedJob, match=f"^site policy: {rule}: site site-a refuses"):
        run_site(fleet.address, site, pki / "sites" / "site-a", heartbeat_s=0.5, max_attempts=1)
    assert _until(lambda: "site-a" in fleet.join_refusals())
    assert fleet.join_refusals()["site-a"].startswith(f"site policy: {rule}: ")
    assert _until(lambda: fleet.sites() == [])


def test_a_site_whose_policy_holds_joins_and_keeps_the_manifest(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    m = _manifest()
    fleet.admit(m, 5)
    site = make_site("site-a")
    site.policy = SitePolicy(
        accepted_job_digests=(DIGEST,),
        allowed_aggregators=("weighted_mean",),
        min_sites_per_round=2,
    )
    start_site(fleet, site)
    fleet.wait_for_sites(1, timeout=5)
    assert _until(lambda: site.manifest == m)
    assert fleet.join_refusals() == {}


def test_rounds_are_refused_for_too_few_sites_and_once_the_agreement_expires(
    fleet: GrpcFleet, start_site: SiteStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet.admit(_manifest(), 5)
    site = make_site("site-a")
    ends = TODAY + dt.timedelta(days=2)
    site.policy = SitePolicy(
        min_sites_per_round=2, data_use_agreement=DataUseAgreement("DUA-9", "toy", ("a",), ends)
    )
    start_site(fleet, site)
    fleet.wait_for_sites(1, timeout=5)
    w = np.zeros(5, np.float32)

    def fit(round_: int, sites: int) -> Any:
        ins = FitIns(round_, w, TrainSettings(), 0, sites=sites)
        return next(iter(fleet.send([("site-a", ins)], Timing(5))))

    ok = fit(1, 2)
    assert isinstance(ok, Reply) and isinstance(ok.message, FitRes)
    few = fit(2, 1)
    assert isinstance(few, Failure)
    assert few.reason.startswith("site reported: site policy: min_sites_per_round: ")

    class Later(dt.date):
        @classmethod
        def today(cls) -> dt.date:
            return ends + dt.timedelta(days=1)

    monkeypatch.setattr(runtime.dt, "date", Later)
    expired = fit(3, 2)
    assert isinstance(expired, Failure)
    assert "site policy: data_use_agreement: site site-a refuses round 3" in expired.reason
    assert "DUA-9 expired" in expired.reason


def test_a_site_requiring_secure_aggregation_refuses_a_plain_round_of_a_secure_job(
    fleet: GrpcFleet, start_site: SiteStarter
) -> None:
    """The manifest promised secure aggregation; a round that asks for a plain update
    anyway (a server breaking its word) is refused before any training."""
    fleet.admit(_manifest(secure_aggregation=True), 5)
    trainer = AddTrainer()
    site = make_site("site-a", trainer=trainer)
    site.policy = SitePolicy(require_secure_aggregation=True)
    start_site(fleet, site)
    fleet.wait_for_sites(1, timeout=5)
    assert _until(lambda: site.manifest is not None and site.manifest.secure_aggregation)
    ins = FitIns(1, np.zeros(5, np.float32), TrainSettings(), 0, sites=3)
    (plain,) = fleet.send([("site-a", ins)], Timing(5))
    assert isinstance(plain, Failure)
    assert plain.reason.startswith(
        "site reported: site policy: require_secure_aggregation: site site-a refuses round 1"
    ), plain.reason
    assert trainer.seen == []
