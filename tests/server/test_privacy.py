"""The server's privacy controller: what a job's [privacy] section turns into, per round."""

from __future__ import annotations

import math

import dp_accounting
import pytest

from consortia.core.config import PrivacyConfig, parse_job
from consortia.core.errors import ConfigError
from consortia.privacy.mechanisms import Distributed
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
    assert isinstance(ctl.mechanism, Distributed)
    m = ctl.mechanism.ddg.min_sites
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
    assert isinstance(ctl.mechanism, Distributed) and ctl.mechanism.ddg.min_sites == 1
    assert ctl.failed_round_rate == pytest.approx(0.5**5)
    assert ctl.notices and "3.12%" in ctl.notices[0]


def test_distributed_target_epsilon_is_met_by_the_accounting_of_its_rounds():
    """Finding 2: target 8 at q = 0.5 over 20 rounds was calibrated as a Poisson-sampled
    Gaussian (z = 1.66) but accounted as zCDP without sampling credit (epsilon 15.5)."""
    rounds, delta = 20, 1e-5
    ctl = PrivacyController(
        PrivacyConfig(mode="distributed", sample_rate=0.5, clip_norm=1.0, target_epsilon=8.0),
        eligible_sites=20,
        dimension=3,
        rounds=rounds,
        seed=0,
        seeded=False,
    )
    assert isinstance(ctl.mechanism, Distributed)
    mech = ctl.mechanism.ddg
    assert mech.noise_multiplier == ctl.noise_multiplier
    # Every released round, whatever its number of contributors, checked by dp-accounting
    # itself: all at min_sites (the fewest a round is released with), then all at 20.
    for n in (mech.min_sites, 20):
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.ZCDpEvent(mech.rho(n)), rounds)
        assert acc.get_epsilon(delta) <= 8.0
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(mech.worst_rho(20)), rounds)
    assert acc.get_epsilon(delta) == pytest.approx(8.0, rel=1e-3)  # not wastefully noisy
    ctl.accountant.extend(ctl.round_events(mech.min_sites) * rounds)
    assert ctl.epsilon() == pytest.approx(acc.get_epsilon(delta), rel=1e-9)


def test_an_accountant_that_cannot_express_distributed_rounds_is_refused_at_load():
    """Finding 2: accountant = 'pld' with distributed DP crashed in round 1 (TypeError)."""
    with pytest.raises(ConfigError, match=r"accountant: distributed DP rounds are zCDP"):
        parse_job(
            {
                "rounds": 2,
                "task": {"framework": "numpy", "app": "toy_app.py"},
                "strategy": {},
                "privacy": {
                    "mode": "distributed",
                    "accountant": "pld",
                    "sample_rate": 0.5,
                    "clip_norm": 1.0,
                    "noise_multiplier": 1.0,
                    "epsilon_limit": 10.0,
                },
            }
        )
