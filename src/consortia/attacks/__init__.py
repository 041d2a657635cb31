"""Attacks by a minority of sites, for simulation only: the adversary that validation,
robust aggregation and the audit are there for, played in tests and benchmarks.

``vectors`` holds the update attacks as pure functions on flat vectors, ``data`` the data
poisoning a site does before it trains (label flipping, a backdoor trigger), ``fleet`` the
fleet wrapper that turns the chosen sites malicious: it sees a phase's replies, so the
attacks that know the honest updates (A little is enough, inner-product manipulation,
mimic) can be played as their papers assume. Configured by ``[simulation.attack]``.
"""

from consortia.attacks.fleet import AttackFleet, choose_malicious

__all__ = ["AttackFleet", "choose_malicious"]
