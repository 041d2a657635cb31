"""Against whom each guarantee holds, in the words privacy.json uses (``threat_model``).

An epsilon without its adversary invites the wrong reading: central DP protects a site
from readers of the model but not from the server that adds the noise. Each statement
lists who the guarantee holds against and who it does not; the compliance report quotes
them as they stand in privacy.json and adds nothing of its own (torch-free, like
``neighbouring``). Each mechanism class names its statement as ``threat_model``; which
mode is which is said there, not here.
"""

from __future__ import annotations

_READERS = "anyone who reads the released model, its metrics or the published reports"

# DP-FedAvg: the server sums the clipped updates and adds the noise itself.
CENTRAL: dict[str, list[str]] = {
    "holds_against": [f"{_READERS}, other sites included"],
    "does_not_hold_against": [
        "the server and its operator: they receive each site's clipped update before the "
        "noise is added (central DP trusts the server)"
    ],
}

# The distributed discrete Gaussian while no secure aggregation runs (the only kind yet).
DISTRIBUTED_WITHOUT_SECURE_AGGREGATION: dict[str, list[str]] = {
    "holds_against": [
        f"{_READERS}, other sites included: the epsilon of the sum, unit one site",
        "the server and its operator, only at the weaker figure of "
        "guarantees.against_the_server: with no secure aggregation the server receives "
        "each site's encoded update, which carries that site's noise share alone",
    ],
    "does_not_hold_against": [
        "sites that collude with the server: the noise shares they reveal can be taken out "
        "of the sum, leaving less noise than was accounted"
    ],
}

# The distributed discrete Gaussian with SecAgg+ (consortia.secagg): the server unmasks sums.
DISTRIBUTED_WITH_SECURE_AGGREGATION: dict[str, list[str]] = {
    "holds_against": [
        f"{_READERS}, other sites included: the epsilon of the sum, unit one site",
        "the server and its operator, at the same epsilon, when it follows the protocol "
        "however curious (it may read every message and ask sites for shares out of turn): "
        "it receives masked inputs only and unmasks no more than each round's sum of "
        "surviving sites, every one of them noised",
    ],
    "does_not_hold_against": [
        "sites that collude with the server: the noise shares they reveal can be taken out "
        "of the sum, and more corrupt neighbours than secure_aggregation.corrupt_fraction "
        "assumes can help unmask a site",
        "a server that gives sites forged public keys of their neighbours: the keys are not "
        "yet signed with the sites' certificates, so an active man in the middle is outside "
        "this guarantee",
    ],
}

# DP-SGD at each site: the update is noised before it leaves the site.
LOCAL: dict[str, list[str]] = {
    "holds_against": [
        "the server and its operator, other sites, and " + _READERS + ": each site's update "
        "is noised by DP-SGD before it leaves the site (unit one example of that site; "
        "each site has its own epsilon, epsilon_max_over_sites is the largest)"
    ],
    "does_not_hold_against": [],
}
