"""The server's privacy controller: what a job's [privacy] section turns into, per round."""

from __future__ import annotations

import math

import pytest

from consortia.core.config import PrivacyConfig
from consortia.server.privacy import PrivacyController


def _tail(m: int, n: int, q: float) -> float:
    """P(Binomial(n, q) < m), exactly: the oracle for the default min_sites."""
    return math.fsum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(m))


def _controller(eligible: int, **privacy: object) -> PrivacyController:
    cfg = PrivacyConfig.model_validate(
        {"mode": "distributed", "clip_norm": 1.0, "noise_multiplier": 1.0, **privacy}
    )
    return PrivacyController(
        cfg, eligible_sites=eligible, dimension=3, rounds=5, seed=0, seeded=False
    )


@pytest.mark.parametrize(("eligible", "rate"), [(100, 0.1), (20, 0.5), (1000, 0.05), (40, 0.25)])
def test_default_min_sites_keeps_failed_rounds_under_one_in_a_thousand(eligible, rate):
    """Finding 11: floor(0.8 qN) failed about 13% of rounds at qN = 10."""
    ctl = _controller(eligible, sample_rate=rate)
    assert ctl.mechanism is not None
    m = ctl.mechanism.min_sites
    assert _tail(m, eligible, rate) < 1e-3 <= _tail(m + 1, eligible, rate)
    assert ctl.failed_round_rate == pytest.approx(_tail(m, eligible, rate), rel=1e-9)
    assert not ctl.notices
    report = ctl.report()["mechanism"]
    assert report["min_sites"] == m
    assert report["expected_failed_round_rate"] == pytest.approx(_tail(m, eligible, rate))


def test_an_explicit_min_sites_that_fails_often_is_reported():
    """Finding 11: a job that asks for more sites than sampling reliably gives is told."""
    ctl = _controller(100, sample_rate=0.1, min_sites=8)
    want = _tail(8, 100, 0.1)
    assert want > 0.1  # the old default: more than one round in ten fails
    assert ctl.failed_round_rate == pytest.approx(want, rel=1e-9)
    (notice,) = ctl.notices
    assert "privacy.min_sites = 8" in notice and "expected failure rate per round" in notice
    assert f"{want:.2%}" in notice
    assert ctl.report()["mechanism"]["expected_failed_round_rate"] == pytest.approx(want)


def test_when_even_one_site_is_unreliable_the_default_is_one_and_reported():
    ctl = _controller(5, sample_rate=0.5)  # nobody sampled with probability 1/32
    assert ctl.mechanism is not None and ctl.mechanism.min_sites == 1
    assert ctl.failed_round_rate == pytest.approx(0.5**5)
    assert ctl.notices and "3.12%" in ctl.notices[0]
