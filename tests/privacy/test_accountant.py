"""The accountant agrees with dp-accounting, merges repeats, round-trips calibration."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import (
    PrivacyAccountant,
    PrivacyEvent,
    calibrate,
    epsilon_for,
    pld_interval,
)


def _sequence() -> list[PrivacyEvent]:
    # A job: 30 DP-FedAvg rounds at q=0.1, z=1.1, then 20 with z=1.5, then 1 Laplace query.
    return [
        *[PrivacyEvent("gaussian", 1.1, 0.1) for _ in range(30)],
        PrivacyEvent("gaussian", 1.5, 0.1, count=20),
        PrivacyEvent("laplace", 2.0),
    ]


def test_epsilon_equals_dp_accounting_for_same_events() -> None:
    acc = PrivacyAccountant(_sequence())
    ours = acc.epsilon(1e-5)
    reference_event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.1)), 30
            ),
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.5)), 20
            ),
            dp_accounting.LaplaceDpEvent(2.0),
        ]
    )
    r = rdp.RdpAccountant().compose(reference_event)
    assert ours["rdp"] == pytest.approx(r.get_epsilon(1e-5), rel=1e-9)
    interval = pld_interval(ours["rdp"])  # type: ignore[arg-type]
    p = pld.PLDAccountant(value_discretization_interval=interval).compose(reference_event)
    assert ours["pld"] == pytest.approx(p.get_epsilon(1e-5), rel=1e-9)
    assert ours["best"] == min(ours["rdp"], ours["pld"])  # type: ignore[type-var]
    assert ours["pld"] < ours["rdp"]  # type: ignore[operator]


def test_order_and_merging_do_not_change_epsilon() -> None:
    events = _sequence()
    forward = PrivacyAccountant(events).epsilon(1e-5)
    backward = PrivacyAccountant(reversed(events)).epsilon(1e-5)
    assert forward["rdp"] == pytest.approx(backward["rdp"], rel=1e-9)


def test_no_events_is_zero_and_more_rounds_cost_more() -> None:
    assert PrivacyAccountant().epsilon(1e-5)["rdp"] == 0.0
    e10 = epsilon_for(1.0, 0.05, 10, 1e-5)["rdp"]
    e100 = epsilon_for(1.0, 0.05, 100, 1e-5)["rdp"]
    assert 0 < e10 < e100  # type: ignore[operator]


def test_round_trip_through_dict() -> None:
    acc = PrivacyAccountant(_sequence())
    again = PrivacyAccountant.from_dict(acc.to_dict())
    assert again.events == acc.events
    with pytest.raises(ConfigError, match="malformed"):
        PrivacyAccountant.from_dict({"events": [{"bogus": 1}]})


@pytest.mark.parametrize(
    ("kind", "target", "q", "rounds"),
    [("rdp", 8.0, 0.1, 50), ("rdp", 1.0, 0.02, 200), ("pld", 4.0, 0.05, 50)],
)
def test_calibration_round_trips(kind: str, target: float, q: float, rounds: int) -> None:
    z = calibrate(target, 1e-5, q, rounds, accountant=kind)  # type: ignore[arg-type]
    got = epsilon_for(z, q, rounds, 1e-5)
    assert got[kind] is not None
    assert got[kind] <= target * (1 + 1e-6)
    assert got[kind] == pytest.approx(target, rel=0.01)
    if kind == "pld":  # PLD is tighter, so it needs less noise than RDP for the same target
        assert z < calibrate(target, 1e-5, q, rounds, accountant="rdp")
        assert got["rdp"] > target  # type: ignore[operator]


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="delta"):
        PrivacyAccountant().epsilon(0.0)
    with pytest.raises(ConfigError, match="sample_rate"):
        PrivacyEvent("gaussian", 1.0, sample_rate=0.0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        PrivacyEvent("gaussian", 0.0)
    with pytest.raises(ConfigError, match="mechanism"):
        PrivacyEvent("exponential", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="target epsilon"):
        calibrate(-1.0, 1e-5, 0.1, 10)
    with pytest.raises(ConfigError, match="accountant"):
        calibrate(1.0, 1e-5, 0.1, 10, accountant="moments")  # type: ignore[arg-type]


def test_cached_rdp_path_equals_dp_accounting_for_mixed_events():
    import dp_accounting
    from dp_accounting import rdp

    from consortia.privacy.accountant import rdp_epsilon

    events = [
        PrivacyEvent("gaussian", 1.1, 0.05, 40),
        PrivacyEvent("laplace", 3.0),
        PrivacyEvent("zcdp", rho=0.2),
        PrivacyEvent("gaussian", 1.1, 0.05, 10),
    ]
    ref = rdp.RdpAccountant()
    ref.compose(
        dp_accounting.ComposedDpEvent(
            [
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1)),
                    50,
                ),
                dp_accounting.LaplaceDpEvent(3.0),
                dp_accounting.ZCDpEvent(0.2),
            ]
        )
    )
    assert rdp_epsilon(events, 1e-6) == pytest.approx(ref.get_epsilon(1e-6), rel=1e-9)
    assert PrivacyAccountant(events).epsilon_by("rdp", 1e-6) == pytest.approx(
        ref.get_epsilon(1e-6), rel=1e-9
    )
    assert rdp_epsilon([], 1e-6) == 0.0
