"""What every privacy mode supplies, as one object: the ``Mechanism`` base class.

A job's ``privacy.mode`` names one mechanism (``registry``); from then on no other file
asks which mode it is. A mechanism says, for its mode:

1. what a site does to its reply before it leaves (``privatize``, a class method: the site
   knows only the round's instructions, never the job file);
2. the server-side wrapper of the round's aggregation (``open_round``);
3. its accounting events, recorded when the noise is drawn (``round_events``);
4. how a resumed server replays what it already spent (``restore``);
5. its section of privacy.json and each site's own report (``report_section``,
   ``site_reports``);
6. its neighbouring relation and privacy unit (``neighbouring``, ``unit``).

Why the wrappers live here and not in ``server/``: they need only a structural view of the
strategy's round aggregate (``RoundSum``: ``add`` and ``result``), so the privacy layer can
own them without importing the layers above it, and a mode stays one file. The server's
``PrivacyController`` keeps what every mode shares (the job's accountant, the budget guard,
the per-round rows, who seeded their noise) and hands itself to the mechanism as a
``Ledger``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from consortia.core.config import PrivacyConfig
from consortia.core.errors import ConfigError
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.core.privacy_modes import ModeFacts
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.rng import SecureRng


class RoundSum(Protocol):
    """The strategy's round aggregate as a mechanism sees it (``RoundAggregate``)."""

    def add(
        self, site: str, update: np.ndarray, weight: float, metrics: Mapping[str, float]
    ) -> None: ...

    def result(self) -> tuple[np.ndarray, dict[str, Any]]: ...


class RoundSink(Protocol):
    """A round's fit replies in, the round's aggregate out (what the round loop streams to)."""

    contributors: list[tuple[str, int]]

    def add(self, res: FitRes) -> None: ...

    def result(self) -> tuple[np.ndarray, dict[str, Any]]: ...


# Opens the job's aggregator for one round, its values in the given dtype.
OpenInner = Callable[[np.dtype], RoundSum]


class Ledger(Protocol):
    """What the server records of a job's privacy, whatever the mode (the controller)."""

    cfg: PrivacyConfig
    rng: SecureRng
    accountant: PrivacyAccountant
    participation: dict[str, int]
    seeded_sites: set[str]
    encodings_seen: dict[str, int]
    per_round: list[dict[str, Any]]

    def epsilon(self, extra: list[PrivacyEvent] | None = None) -> float | None: ...

    def note_seeded(self, res: FitRes) -> None: ...


class Mechanism(ABC):
    """One privacy mode, built from the job's [privacy] section (see the module docstring)."""

    # What core's job-file and wire checks know of this mode (the same object as
    # consortia.core.privacy_modes.MODES[name]); name and unit are read from it.
    facts: ClassVar[ModeFacts]
    name: ClassVar[str]
    neighbouring: ClassVar[str]
    # Against whom the guarantee holds and against whom not (``consortia.privacy.adversary``).
    threat_model: ClassVar[Mapping[str, list[str]]]
    level: ClassVar[str]  # privacy.json's "level"
    unit: ClassVar[str]  # each site report's "unit"
    # Whether the job's epsilon_limit is checked by the server before each round.
    server_budget: ClassVar[bool] = True

    def __init__(
        self, cfg: PrivacyConfig, *, eligible_sites: int, dimension: int, rounds: int
    ) -> None:
        self.cfg = cfg
        self.eligible_sites = eligible_sites
        self.dimension = dimension
        self.rounds = rounds
        self.noise_multiplier = 0.0
        self.update_noise_multiplier = 0.0
        self.clip_norm = self.initial_clip_norm = 0.0
        self.failed_round_rate = 0.0
        # What the job should be told when it starts (the run driver logs and publishes it).
        self.notices: list[str] = []

    # -- the job file ----------------------------------------------------------------------
    @classmethod
    def check_job(cls, cfg: PrivacyConfig, *, deployed: bool) -> None:
        """Refuse, at job load, what this mode cannot honour (ConfigError names the key)."""
        if cfg.epsilon_limit is not None and not cls.server_budget:
            raise ConfigError(
                f"privacy.epsilon_limit: {cls.name} DP is example-level and spent per site; "
                "set each site's policy (max_epsilon) instead"
            )

    def use_secure_aggregation(self) -> None:
        """The job runs secure aggregation: the server sees only sums (distributed DP)."""
        raise ConfigError(f"privacy.mode: {self.name!r} DP does not run with secure aggregation")

    # -- the site's side -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def applies(cls, p: ClientPrivacy | None, settings: TrainSettings) -> bool:
        """Whether a round's instructions ask the site for this mode."""

    @classmethod
    @abstractmethod
    def privatize(
        cls,
        reply: FitRes,
        p: ClientPrivacy | None,
        site_id: str,
        round_: int,
        noise_seed: int | None,
    ) -> FitRes:
        """What the site sends instead of ``reply`` (its update, count and metrics)."""

    @classmethod
    @abstractmethod
    def site_events(
        cls,
        p: ClientPrivacy | None,
        settings: TrainSettings,
        num_examples: int,
        rounds: int,
        dimension: int,
    ) -> list[PrivacyEvent]:
        """What rounds 1..``rounds`` cost a site, as the site computes it from the round's
        declared parameters (its policy's projection); [] when the round is not this mode's."""

    # -- the server's side -----------------------------------------------------------------
    def train_settings(self, base: TrainSettings) -> TrainSettings:
        return base

    def client_privacy(self) -> ClientPrivacy | None:
        """The instructions each site's ``privatize`` follows (None: none needed)."""
        return None

    @property
    def modulus_bits(self) -> int:
        return 0

    @property
    def min_replies(self) -> int:
        return 0

    def round_events(self, surviving: int | None = None) -> list[PrivacyEvent]:
        """What releasing one more round costs the job's accountant."""
        return []

    @abstractmethod
    def open_round(self, ledger: Ledger, open_inner: OpenInner, dtype: np.dtype) -> RoundSink:
        """The round's fit sink: the job's aggregator wrapped in this mechanism."""

    @abstractmethod
    def end_round(self, ledger: Ledger, agg: Any, settings: TrainSettings) -> dict[str, float]:
        """Account what is accounted after the round; return the round's privacy metrics."""

    @abstractmethod
    def restore(self, ledger: Ledger, history: list[dict[str, Any]]) -> None:
        """Replay the accounting of completed rounds (from their metrics rows)."""

    # -- the report ------------------------------------------------------------------------
    @classmethod
    def threat_statement(cls) -> dict[str, list[str]]:
        """privacy.json's ``threat_model``: a copy, so a report cannot alter the statement."""
        return {k: list(v) for k, v in cls.threat_model.items()}

    def threats(self) -> dict[str, list[str]]:
        """This job's statement (a mode may have more than one: distributed DP with and
        without secure aggregation)."""
        return self.threat_statement()

    def site_noise_source(self) -> str:
        return "sites: each site's own ChaCha20 (SecureRng) keyed from its os.urandom"

    def outside_guarantee(self) -> list[str]:
        """This mode's own entries in privacy.json's ``outside_guarantee``."""
        return []

    @abstractmethod
    def report_section(self, ledger: Ledger) -> dict[str, Any]:
        """This mode's fields of privacy.json (after the ones every mode has)."""

    @abstractmethod
    def site_reports(self, ledger: Ledger) -> dict[str, dict[str, Any]]:
        """Per site, its own participation and privacy figures, and nobody else's."""
