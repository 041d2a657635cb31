"""The job file's and the wire's privacy rules, now asked of each mode's facts, say what
they said when they compared mode strings: the mode, the key and why."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from consortia.core.config import parse_job
from consortia.core.errors import ConfigError
from consortia.core.messages import (
    ClientPrivacy,
    FitIns,
    InvalidMessageError,
    TrainSettings,
    kind_of,
    update_dtype,
)

SAMPLED = {"sample_rate": 0.5, "clip_norm": 1.0, "noise_multiplier": 1.0}


def _job(privacy: dict[str, Any], **over: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "rounds": 3,
        "task": {"framework": "torch", "app": "app.py"},
        "strategy": {},
        "simulation": {"sites": 4},
        "privacy": privacy,
    }
    job.update(over)
    return job


@pytest.mark.parametrize(
    "privacy, message",
    [
        ({"mode": "local"}, "local DP needs local_noise_multiplier"),
        ({"mode": "central", "clip_norm": 1.0}, "central DP needs sample_rate"),
        ({"mode": "distributed", "sample_rate": 0.5}, "distributed DP needs clip_norm"),
        (
            {"mode": "distributed", **SAMPLED, "adaptive_clipping": {}},
            "adaptive clipping is for central DP only",
        ),
        (
            {"mode": "distributed", **SAMPLED, "accountant": "pld"},
            "accountant: distributed DP rounds are zCDP events, which the PLD accountant "
            "cannot express; use accountant = 'rdp'",
        ),
    ],
)
def test_privacy_section_rules_name_the_mode_and_the_key(
    privacy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_job(_job(privacy))
    assert message in str(err.value)


def test_what_a_mode_allows_still_parses() -> None:
    central = parse_job(_job({"mode": "central", **SAMPLED, "accountant": "pld"}))
    assert central.poisson_sampling and central.privacy_facts is not None
    assert central.privacy_facts.server_noise
    local = parse_job(
        _job({"mode": "local", "local_noise_multiplier": 1.0}, strategy={"sites_per_round": 2})
    )
    assert not local.poisson_sampling


def test_poisson_sampled_modes_refuse_a_fixed_cohort_naming_them() -> None:
    with pytest.raises(ConfigError, match="under central or distributed DP sites are Poisson"):
        parse_job(_job({"mode": "central", **SAMPLED}, strategy={"sites_per_round": 2}))


@pytest.mark.parametrize(
    "mode, validation, message",
    [
        ("distributed", {"max_norm": 5.0}, "strategy.validation.max_norm: under distributed"),
        ("central", {"max_norm_multiple": 3.0}, "max_norm_multiple: under central DP which"),
    ],
)
def test_norm_checks_that_privacy_makes_meaningless_are_refused(
    mode: str, validation: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_job(_job({"mode": mode, **SAMPLED}, strategy={"validation": validation}))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "mode, said", [("central", "'central' hides;"), ("distributed", "sees only the sum")]
)
def test_an_audit_of_a_sum_only_mode_is_refused(mode: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_job(_job({"mode": mode, **SAMPLED}, audit={}))
    assert "audit: per-site scores would publish" in str(err.value) and said in str(err.value)


def _fit(mode: Any, bits: int = 16) -> FitIns:
    p = ClientPrivacy(mode=mode, clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.5,
                      delta=1e-5, bits=bits)  # fmt: skip
    return FitIns(round=1, weights=np.zeros(3, np.float32), settings=TrainSettings(), seed=0,
                  privacy=p)  # fmt: skip


def test_only_distributed_instructions_ask_for_an_encoding() -> None:
    assert update_dtype(_fit("distributed")) == np.dtype(np.uint64)
    assert update_dtype(_fit("central")) == np.dtype(np.float32)


@pytest.mark.parametrize("mode", ["local", "trusted", 7, None])
def test_a_site_refuses_instructions_for_a_mode_that_sends_none(mode: Any) -> None:
    """Local DP travels in the training settings, not as ClientPrivacy; anything else, a
    non-string included, is an unknown mode and a clear refusal, never a crash."""
    check = kind_of(_fit(mode)).check_request
    assert check is not None
    with pytest.raises(InvalidMessageError, match="unknown privacy mode"):
        check(_fit(mode))
