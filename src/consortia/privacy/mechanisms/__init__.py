"""The privacy modes, one mechanism object each, and the one place a mode string is read.

``MECHANISMS`` maps a job's ``privacy.mode`` to its class; every other file asks the
mechanism object (``build_mechanism`` on the server, ``round_mechanism`` on a site) and
never compares mode strings itself (a test holds the source tree to that).
"""

from __future__ import annotations

from consortia.core.config import PrivacyConfig
from consortia.core.errors import ConfigError
from consortia.core.messages import ClientPrivacy, TrainSettings
from consortia.privacy.accountant import PrivacyEvent
from consortia.privacy.mechanisms.base import Ledger, Mechanism, RoundSink
from consortia.privacy.mechanisms.central import Central
from consortia.privacy.mechanisms.distributed import Distributed
from consortia.privacy.mechanisms.local import Local

MECHANISMS: dict[str, type[Mechanism]] = {m.name: m for m in (Central, Distributed, Local)}

__all__ = [
    "MECHANISMS",
    "Central",
    "Distributed",
    "Ledger",
    "Local",
    "Mechanism",
    "RoundSink",
    "build_mechanism",
    "mechanism_class",
    "round_mechanism",
    "round_mode",
    "site_events",
]


def mechanism_class(mode: str) -> type[Mechanism]:
    """The class of ``mode`` (a job file's or a report's ``mode``)."""
    try:
        return MECHANISMS[mode]
    except KeyError:
        raise ConfigError(
            f"unknown privacy mode {mode[:32]!r}; known: {', '.join(MECHANISMS)}"
        ) from None


def build_mechanism(
    cfg: PrivacyConfig, *, eligible_sites: int, dimension: int, rounds: int
) -> Mechanism:
    """The job's mechanism, calibrated for its sites, model size and rounds."""
    cls = mechanism_class(cfg.mode)
    return cls(cfg, eligible_sites=eligible_sites, dimension=dimension, rounds=rounds)


def round_mechanism(p: ClientPrivacy | None, settings: TrainSettings) -> type[Mechanism] | None:
    """The mechanism a round's instructions ask the site to apply (None: no privacy)."""
    for cls in MECHANISMS.values():
        if cls.applies(p, settings):
            return cls
    if p is not None:
        raise ConfigError(f"unknown privacy mode {p.mode[:32]!r} in the server's instructions")
    return None


def round_mode(p: ClientPrivacy | None, settings: TrainSettings) -> str | None:
    """The privacy mode a round's instructions carry (as declared), or None."""
    if p is not None:
        return p.mode
    cls = round_mechanism(p, settings)
    return cls.name if cls is not None else None


def site_events(
    p: ClientPrivacy | None,
    settings: TrainSettings,
    num_examples: int,
    rounds: int,
    dimension: int,
) -> list[PrivacyEvent]:
    """Privacy events of rounds 1..``rounds`` as a site computes them from the round's
    declared parameters: every mode whose instructions the round carries, so a round that
    asks for two is charged for both (over-counting never under-protects)."""
    events: list[PrivacyEvent] = []
    for cls in MECHANISMS.values():
        events.extend(cls.site_events(p, settings, num_examples, rounds, dimension))
    return events
