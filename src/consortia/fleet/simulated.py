"""The fleets a simulation can run on, by the name ``simulation.fleet`` gives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from consortia.core.registry import FLEETS
from consortia.fleet.base import Fleet, MakeSite
from consortia.fleet.debug import DebugFleet
from consortia.fleet.pool import PoolFleet

FleetFactory = Callable[[Sequence[str], MakeSite, int], Fleet]


def _debug(site_ids: Sequence[str], make_site: MakeSite, workers: int) -> Fleet:
    return DebugFleet(site_ids, make_site)


def _pool(site_ids: Sequence[str], make_site: MakeSite, workers: int) -> Fleet:
    return PoolFleet(site_ids, make_site, workers)


def register_fleet(name: str, factory: FleetFactory, *, replace: bool = False) -> None:
    """Make a fleet nameable as ``simulation.fleet``: ``factory(site_ids, make_site, workers)``."""
    FLEETS.register(name, factory, replace=replace)


register_fleet("debug", _debug)
register_fleet("pool", _pool)
