"""Job and site budget guards refuse a round that would pass the limit, before spending."""

from __future__ import annotations

import math

import pytest

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.budget import BudgetGuard, check_budget, epsilon_of

# Laplace with noise_multiplier 1 is pure epsilon = 1 per round; at any delta the PLD
# epsilon of k rounds is below k (exact composition), RDP's is <= k too.
ROUND = PrivacyEvent("laplace", noise_multiplier=1.0)


def test_job_budget_stops_the_run() -> None:
    acc = PrivacyAccountant()
    rounds_run = 0
    for _ in range(100):
        decision = check_budget(acc, [ROUND], limit=3.001, delta=1e-6)
        if not decision.allowed:
            break
        acc.record(ROUND)
        rounds_run += 1
    # Three rounds of epsilon 1 fit under 3.001 (PLD: 3.0004); the fourth would not.
    assert rounds_run == 3
    assert decision.projected_epsilon == pytest.approx(4.0, abs=0.01)
    assert decision.spent_epsilon == pytest.approx(3.0, abs=0.001)
    assert acc.epsilon(1e-6)["best"] <= 3.001  # the refused round was never spent
    assert "job refuses" in decision.message


def test_projection_is_exact_for_pure_dp_single_round() -> None:
    decision = check_budget(PrivacyAccountant(), [ROUND], limit=0.99, delta=1e-5)
    assert not decision.allowed
    assert decision.spent_epsilon == 0.0
    assert decision.projected_epsilon == pytest.approx(1.0, abs=1e-3)


def test_site_policy_refuses_with_clear_message() -> None:
    guard = BudgetGuard(2.0, 1e-5, who="site 'hospital-a'")
    acc = PrivacyAccountant([PrivacyEvent("laplace", 1.0, count=2)])
    decision = guard.check(acc, [ROUND])
    assert not decision.allowed
    msg = decision.message
    assert "hospital-a" in msg and "refuses" in msg and "limit 2" in msg
    assert decision.projected_epsilon > 2.0
    assert f"{decision.projected_epsilon:.4g}" in msg
    small = PrivacyEvent("gaussian", noise_multiplier=50.0)
    assert guard.check(PrivacyAccountant([PrivacyEvent("laplace", 1.0)]), [small]).allowed


def test_non_private_release_is_always_refused() -> None:
    decision = check_budget(
        PrivacyAccountant(), [PrivacyEvent("non_private")], limit=1e9, delta=1e-5
    )
    assert not decision.allowed and math.isinf(decision.projected_epsilon)


def test_bad_limits() -> None:
    with pytest.raises(ConfigError, match="limit"):
        check_budget(PrivacyAccountant(), [], limit=0.0, delta=1e-5)
    with pytest.raises(ConfigError, match="site 'x'"):
        BudgetGuard(-1.0, 1e-5, who="site 'x'")


def test_one_definition_of_epsilon_per_accountant() -> None:
    """The guard's epsilon is the accountant's own figure for the kind it names: RDP for a
    site's policy, the job's accountant for its limit, best for analytics."""
    acc = PrivacyAccountant([PrivacyEvent("gaussian", 1.1, 0.1, 50)])
    figures = acc.epsilon(1e-5)
    for kind in ("rdp", "pld", "best"):
        assert epsilon_of(acc, 1e-5, kind) == figures[kind]
    assert figures["best"] == min(figures["rdp"], figures["pld"])
    guard = BudgetGuard(figures["rdp"], 1e-5, "rdp")
    assert guard.check(acc, []).allowed
    assert not guard.check(acc, [ROUND]).allowed
    assert math.isinf(epsilon_of(acc, 1e-5, "pld", [PrivacyEvent("non_private")]))
