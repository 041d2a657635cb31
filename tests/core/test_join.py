"""A site's statement of its policy: the digest is of the validated policy (not the file's
bytes), the same in simulation and deployment; what the server receives is checked as
hostile input before it can reach the ledger or the report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortia.cli.client import load_policy
from consortia.client.policy import DataUseAgreement, SitePolicy
from consortia.core.config import parse_model
from consortia.core.errors import ConfigError
from consortia.core.join import (
    AgreementStatement,
    JoinRes,
    JoinStatement,
    join_statement,
    statement_json,
)
from consortia.core.messages import InvalidMessageError, decode, encode
from consortia.core.policy_config import SitePolicyConfig, policy_digest
from consortia.ledger.chain import canonical_json

DIGEST = "ab" * 32
DUA = DataUseAgreement("DUA-7", "sepsis model", ("hospital-a", "uni-b"), dt.date(2099, 6, 30))


def _file(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def test_the_digest_is_of_the_rules_not_of_the_file(tmp_path: Path) -> None:
    terse = _file(tmp_path, 'min_sites_per_round = 3\nallowed_aggregators = ["krum"]\n', "a")
    verbose = _file(
        tmp_path,
        "# our hospital's rules\nallowed_aggregators = [ 'krum' ]\n"
        "delta = 1e-5\nrequire_privacy = false\nmin_sites_per_round = 3\n",
        "b",
    )
    other = _file(tmp_path, "min_sites_per_round = 4\nallowed_aggregators = ['krum']\n", "c")
    digest = policy_digest(parse_model(SitePolicyConfig, terse))
    assert digest == policy_digest(parse_model(SitePolicyConfig, verbose))
    assert digest != policy_digest(parse_model(SitePolicyConfig, other))
    # the same rules as a SitePolicy (simulation builds one from the job file)
    assert load_policy(terse).digest() == digest
    # documented: SHA-256 of the canonical JSON of every key, defaults filled in
    cfg = parse_model(SitePolicyConfig, terse)
    text = json.dumps(
        cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    import hashlib

    assert digest == hashlib.sha256(text.encode()).hexdigest()


def test_a_policy_round_trips_through_its_config() -> None:
    policy = SitePolicy(
        max_epsilon=3.0,
        accepted_job_digests=(DIGEST,),
        allowed_strategies=("fedavg",),
        min_sites_per_round=2,
        data_use_agreement=DUA,
    )
    assert SitePolicy.from_config(policy.config()) == policy
    assert SitePolicy().digest() == policy_digest(SitePolicyConfig())
    assert policy.digest() != SitePolicy().digest()


def test_a_policy_states_itself_and_the_statement_travels_and_checks_out() -> None:
    policy = SitePolicy(data_use_agreement=DUA)
    res = policy.join_reply(JoinRes("site-a", 0))
    back = decode(encode(res), reply=True, site="site-a")
    assert back == res
    statement = join_statement(back)
    assert statement is not None
    assert statement_json(statement) == {
        "policy_sha256": policy.digest(),
        "dua": {
            "reference": "DUA-7",
            "purpose": "sepsis model",
            "parties": ["hospital-a", "uni-b"],
            "expires": "2099-06-30",
        },
    }
    without = join_statement(SitePolicy().join_reply(JoinRes("site-a", 0)))
    assert without == JoinStatement(SitePolicy().digest(), None)
    assert join_statement(JoinRes("site-a", 0)) is None
    assert statement_json(None) == {"policy_sha256": None, "dua": None}


def _res(digest: str | None = DIGEST, **agreement: object) -> JoinRes:
    fields: dict[str, object] = dict(
        reference="DUA-1", purpose="toy", expires="2099-01-01", parties={"0": "a"}
    )
    fields.update(agreement)
    return JoinRes("site-a", 0, digest, AgreementStatement(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("res", "why"),
    [
        (_res(None), "without its policy's digest"),
        (_res("AB" * 32), "not a SHA-256 digest"),
        (_res("ab" * 31), "policy_sha256 of 62 characters"),
        (_res(reference=""), "reference: String should have at least 1 character"),
        (_res(reference="r" * 201), "reference: String should have at most 200 characters"),
        (_res(purpose="p" * 1001), "purpose: String should have at most 1000 characters"),
        (_res(parties={"0": "x" * 201}), "parties.0: String should have at most 200"),
        (_res(parties={"0": ""}), "parties.0: String should have at least 1"),
        (_res(parties={}), "parties: List should have at least 1 item"),
        (_res(parties={"1": "a"}), "numbered 0 to n-1"),
        (_res(parties={str(i): "a" for i in range(65)}), "n <= 64"),
        (_res(reference="a\nb"), "reference: Value error, contains the control character U+000A"),
        (_res(parties={"0": "a\x00"}), "control character U+0000"),
        (_res(parties={"0": "a\ud800"}), "parties.0: Input should be a valid string"),
        (_res(purpose="\u202e\x07"), "control character U+0007"),
        (_res(expires="2099-13-01"), "expires:"),
        (_res(expires="soon"), "expires:"),
    ],
)
def test_a_statement_that_does_not_check_out_is_refused_by_name(res: JoinRes, why: str) -> None:
    with pytest.raises(InvalidMessageError) as err:
        join_statement(res)
    assert why in str(err.value)
    assert len(str(err.value)) < 400  # never the site's text at length


def test_a_purpose_may_run_over_lines() -> None:
    statement = join_statement(_res(purpose="sepsis model\n\tfor adults"))
    assert statement is not None and statement.dua is not None
    assert statement.dua.purpose == "sepsis model\n\tfor adults"


@given(
    reference=st.text(min_size=1, max_size=200),
    purpose=st.text(min_size=1, max_size=1000),
    parties=st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=64),
)
def test_whatever_a_site_states_is_refused_or_fits_a_ledger_entry(
    reference: str, purpose: str, parties: list[str]
) -> None:
    res = _res(
        reference=reference, purpose=purpose, parties={str(i): p for i, p in enumerate(parties)}
    )
    try:
        statement = join_statement(res)
    except InvalidMessageError:
        return
    assert statement is not None
    text = canonical_json(statement_json(statement))  # the ledger's own encoding
    text.encode("utf-8")
    assert json.loads(text)["dua"]["parties"] == parties


def test_a_policy_file_with_a_control_character_in_its_agreement_is_refused(
    tmp_path: Path,
) -> None:
    f = _file(
        tmp_path,
        '[data_use_agreement]\nreference = "DUA\\u001b[2J"\npurpose = "p"\n'
        'parties = ["a"]\nexpires = 2099-01-01\n',
    )
    with pytest.raises(ConfigError, match=r"reference.*control character U\+001B"):
        load_policy(f)
