"""A site's policy rules as pure functions: each refuses what it should and lets through
what it should, at join (against the job's manifest) and before every round."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from consortia.cli.client import load_policy
from consortia.client.policy import DataUseAgreement, PolicyRefusal, SitePolicy
from consortia.core.errors import ConfigError
from consortia.core.manifest import (
    POLICY_REFUSAL_PREFIX,
    JobManifest,
    ManifestPrivacy,
    parse_manifest,
)
from consortia.core.messages import ClientPrivacy, FitIns, InvalidMessageError, TrainSettings
from consortia.security.signing import file_digest, new_signer, read_signature, sign_job

TODAY = dt.date(2025, 6, 1)
DIGEST = "ab" * 32
DUA = DataUseAgreement("DUA-7", "sepsis model", ("hospital-a", "uni-b"), dt.date(2025, 6, 30))


def manifest(**kw: object) -> JobManifest:
    base: dict[str, object] = dict(
        job_name="toy",
        job_id="toy-1",
        job_digest=DIGEST,
        strategy="fedavg",
        aggregator="weighted_mean",
        min_sites=3,
        rounds=5,
    )
    return JobManifest(**{**base, **kw})  # type: ignore[arg-type]


def refused(policy: SitePolicy, m: JobManifest | None, today: dt.date = TODAY) -> str:
    with pytest.raises(PolicyRefusal) as info:
        policy.check_join("site-a", m, today)
    text = str(info.value)
    assert text.startswith(POLICY_REFUSAL_PREFIX)
    return text


def test_accepted_digests_let_in_only_those_jobs():
    p = SitePolicy(accepted_job_digests=(DIGEST,))
    p.check_join("site-a", manifest(), TODAY)
    text = refused(p, manifest(job_digest="cd" * 32))
    assert "accepted_job_digests:" in text and "unsigned" in text


def test_accepted_signers_let_in_a_job_signed_by_one_of_them(tmp_path: Path):
    key, pub = new_signer(tmp_path, "board")
    _, other_pub = new_signer(tmp_path, "other")
    job = tmp_path / "job.toml"
    job.write_text("name = 'x'\n")
    sign_job(job, key)
    m = manifest(job_digest=file_digest(job), job_signature=read_signature(job))
    SitePolicy(accepted_job_signers=(pub.read_text().strip(),)).check_join("s", m, TODAY)
    wrong = SitePolicy(accepted_job_signers=(other_pub.read_text().strip(),))
    assert "not signed by an accepted signer" in refused(wrong, m)
    unsigned = manifest(job_digest=file_digest(job))
    assert "accepted_job_signers:" in refused(wrong, unsigned)
    # one changed byte of the job file and the signature no longer holds
    job.write_text("name = 'y'\n")
    changed = manifest(job_digest=file_digest(job), job_signature=m.job_signature)
    trusted = SitePolicy(accepted_job_signers=(pub.read_text().strip(),))
    assert "accepted_job_signers" in refused(trusted, changed)


def test_allowed_strategies_and_aggregators():
    p = SitePolicy(allowed_strategies=("fedavg",), allowed_aggregators=("weighted_mean", "krum"))
    p.check_join("site-a", manifest(), TODAY)
    assert "allowed_aggregators: " in refused(p, manifest(aggregator="mean"))
    assert "allowed_strategies: " in refused(p, manifest(strategy="fedadam"))


def test_secure_aggregation_required():
    p = SitePolicy(require_secure_aggregation=True)
    assert "require_secure_aggregation: " in refused(p, manifest())
    p.check_join("site-a", manifest(secure_aggregation=True), TODAY)


def test_min_sites_per_round_at_join_and_before_a_round():
    p = SitePolicy(min_sites_per_round=3)
    p.check_join("site-a", manifest(min_sites=3), TODAY)
    assert "min_sites_per_round: " in refused(p, manifest(min_sites=2))
    w = np.zeros(4, np.float32)
    p.check_fit("site-a", FitIns(1, w, TrainSettings(), 0, sites=3), 10, 4, manifest(), TODAY)
    for sites in (2, 0):
        with pytest.raises(PolicyRefusal, match=r"^site policy: min_sites_per_round: .*round 1"):
            p.check_fit("site-a", FitIns(1, w, TrainSettings(), 0, sites=sites), 10, 4, None, TODAY)


def test_an_expired_agreement_stops_the_join_and_every_later_round():
    p = SitePolicy(data_use_agreement=DUA)
    p.check_join("site-a", manifest(), DUA.expires)  # the last day still holds
    text = refused(p, manifest(), DUA.expires + dt.timedelta(days=1))
    assert "data_use_agreement: " in text and "DUA-7 expired on 2025-06-30" in text
    # ... also with no manifest at all
    refused(p, None, DUA.expires + dt.timedelta(days=1))
    ins = FitIns(4, np.zeros(4, np.float32), TrainSettings(), 0, sites=3)
    p.check_fit("site-a", ins, 10, 4, manifest(), DUA.expires)
    with pytest.raises(PolicyRefusal, match=r"^site policy: data_use_agreement: .*round 4"):
        p.check_fit("site-a", ins, 10, 4, manifest(), DUA.expires + dt.timedelta(days=1))


def test_epsilon_and_privacy_rules_at_join():
    dp = ManifestPrivacy(
        mode="central", delta=1e-5, target_epsilon=8.0, sample_rate=1.0, clip_norm=1.0
    )
    assert "max_epsilon: " in refused(SitePolicy(max_epsilon=4.0), manifest(privacy=dp))
    SitePolicy(max_epsilon=10.0).check_join("s", manifest(privacy=dp), TODAY)
    assert "require_privacy: " in refused(SitePolicy(require_privacy=True), manifest())


def test_a_round_whose_privacy_differs_from_the_manifest_is_refused():
    dp = ManifestPrivacy(
        mode="central", delta=1e-5, noise_multiplier=2.0, sample_rate=1.0, clip_norm=1.0
    )
    w = np.zeros(4, np.float32)
    private = FitIns(1, w, TrainSettings(), 0, ClientPrivacy("central", 1.0, 2.0, 1.0, 1e-5), 3)
    plain = FitIns(1, w, TrainSettings(), 0, sites=3)
    p = SitePolicy()
    p.check_fit("s", private, 10, 4, manifest(privacy=dp), TODAY)
    with pytest.raises(
        PolicyRefusal, match=r"^site policy: manifest: .*privacy none.*declared central"
    ):
        p.check_fit("s", plain, 10, 4, manifest(privacy=dp), TODAY)


def test_rules_that_only_the_manifest_can_answer_refuse_without_one():
    p = SitePolicy(allowed_aggregators=("mean",))
    assert "manifest: " in refused(p, None)
    with pytest.raises(PolicyRefusal, match="never accepted"):
        p.check_fit("s", FitIns(1, np.zeros(2, np.float32), TrainSettings(), 0), 1, 2, None, TODAY)
    SitePolicy(max_epsilon=5.0).check_join("s", None, TODAY)  # judged on each round instead


def test_a_manifest_from_the_network_is_checked():
    m = manifest()
    assert parse_manifest(m.to_json()) == m
    assert m.digest() == parse_manifest(m.to_json()).digest()
    with pytest.raises(InvalidMessageError, match="over the limit"):
        parse_manifest(" " * 20_000)
    with pytest.raises(InvalidMessageError, match="invalid"):
        parse_manifest(m.to_json().replace('"rounds":5', '"rounds":5,"extra":1'))


def test_policy_file_with_every_key_loads(tmp_path: Path):
    f = tmp_path / "policy.toml"
    f.write_text(
        f"""
max_epsilon = 8.0
accepted_job_digests = ["{DIGEST}"]
allowed_aggregators = ["weighted_mean"]
require_secure_aggregation = true
min_sites_per_round = 3

[data_use_agreement]
reference = "DUA-7"
purpose = "sepsis model"
parties = ["hospital-a", "uni-b"]
expires = 2025-06-30
"""
    )
    p = load_policy(f)
    assert p.data_use_agreement == DUA and p.min_sites_per_round == 3
    assert p.allowed_aggregators == ("weighted_mean",) and p.allowed_strategies is None
    assert len(p.digest()) == 64


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("allowed_aggregator = ['mean']\n", "allowed_aggregator: unknown key"),
        (
            "[data_use_agreement]\nreference='a'\npurpose='b'\nparties=['c']\nexpires='2025-13-01'\n",
            "data_use_agreement.expires",
        ),
        (
            "[data_use_agreement]\nreference='a'\npurpose='b'\nparties=['c']\nexpires=2025-06-01\nsigned=1\n",
            "data_use_agreement.signed: unknown key",
        ),
        ("accepted_job_digests = ['abc']\n", "accepted_job_digests"),
        ("accepted_job_signers = ['bm90IGEga2V5']\n", "accepted_job_signers"),
    ],
)
def test_a_bad_policy_file_is_a_clear_error_naming_the_key(tmp_path: Path, text: str, named: str):
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_policy(f)
