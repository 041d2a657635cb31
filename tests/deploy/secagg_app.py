"""The toy site app (toy_app.py) paced per round, for the secure-aggregation process tests.

``CONSORTIA_SECAGG_PACE="site-a@2=3,site-c@2=60"`` makes site-a train 3 s longer and
site-c 60 s longer in round 2 only. Secure aggregation runs four phases a round; a test
that must kill a site between two of them (after its masked input left, before the unmask
request came) needs the others to be still training at that moment, and only in the round
it aims at, so the rounds before it stay fast. No hook in the product: only the app is slow.
"""

from __future__ import annotations

import os
import time

import toy_app

from consortia import Site
from consortia.core.messages import FitIns, FitRes

make_model = toy_app.make_model
SITES = toy_app.SITES


def pause_for(site_name: str, round_: int) -> float:
    """Seconds ``site_name`` waits before training in round ``round_`` (0: none)."""
    for item in os.environ.get("CONSORTIA_SECAGG_PACE", "").split(","):
        who, _, seconds = item.partition("=")
        name, _, when = who.partition("@")
        if name == site_name and when == str(round_):
            return float(seconds)
    return 0.0


def make_site(site_name: str) -> Site:
    site = toy_app.make_site(site_name)
    honest = site.on_fit

    def on_fit(ins: FitIns) -> FitRes:
        pause = pause_for(site_name, ins.round)
        if pause:
            time.sleep(pause)
        return honest(ins)

    site.on_fit = on_fit  # type: ignore[method-assign]
    return site
