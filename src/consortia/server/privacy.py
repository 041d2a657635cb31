"""Server side of differential privacy: it wraps the round's aggregation, never forks the loop.

``PrivacyController`` holds what every mode shares: the job's accountant, its budget check
before each round, the noise generator, the per-round rows and who seeded their noise. What
differs by mode (the instructions sites follow, the wrapper of the round's aggregation, the
accounting events, restoring, the report's own section) is the job's mechanism object
(``consortia.privacy.mechanisms``), which the controller hands itself to as its ledger.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from consortia.core.config import PrivacyConfig
from consortia.core.errors import BudgetExhausted
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.core.rng import derive_seed
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.budget import BudgetGuard
from consortia.privacy.mechanisms import Mechanism, RoundSink, build_mechanism
from consortia.privacy.rng import SecureRng
from consortia.strategy.aggregators import Aggregator, State

__all__ = ["BudgetExhausted", "PrivacyController"]


class PrivacyController:
    def __init__(
        self,
        cfg: PrivacyConfig,
        *,
        eligible_sites: int,
        dimension: int,
        rounds: int,
        seed: int,
        seeded: bool,
        secure_aggregation: bool = False,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.seeded = seeded
        self.rng = SecureRng(derive_seed(seed, "server-noise")) if seeded else SecureRng()
        self.accountant = PrivacyAccountant()
        self.participation: dict[str, int] = {}
        self.seeded_sites: set[str] = set()
        self.encodings_seen: dict[str, int] = {}
        self.per_round: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self.eligible_sites = eligible_sites
        self.dimension = dimension
        self.mechanism: Mechanism = build_mechanism(
            cfg, eligible_sites=eligible_sites, dimension=dimension, rounds=rounds
        )
        if secure_aggregation:
            self.mechanism.use_secure_aggregation()
        # What the job should be told when it starts (the run driver logs and publishes it).
        self.notices: list[str] = self.mechanism.notices

    # -- the mechanism's figures ---------------------------------------------------------
    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier

    @property
    def clip_norm(self) -> float:
        return self.mechanism.clip_norm

    @property
    def failed_round_rate(self) -> float:
        return self.mechanism.failed_round_rate

    @property
    def modulus_bits(self) -> int:
        return self.mechanism.modulus_bits

    @property
    def min_replies(self) -> int:
        return self.mechanism.min_replies

    # -- before a round ----------------------------------------------------------------
    def round_events(self, surviving: int | None = None) -> list[PrivacyEvent]:
        """What releasing one more round costs (distributed: with ``surviving`` sites)."""
        return self.mechanism.round_events(surviving)

    def epsilon(self, extra: list[PrivacyEvent] | None = None) -> float | None:
        return self.accountant.epsilon_by(self.cfg.accountant, self.cfg.delta, extra or [])

    def before_round(self, rnd: int) -> None:
        limit = self.cfg.epsilon_limit
        if limit is None or not self.mechanism.server_budget:
            return
        guard = BudgetGuard(limit, self.cfg.delta, self.cfg.accountant, "job")
        decision = guard.check(self.accountant, self.round_events())
        if not decision.allowed:
            self.stopped = (
                f"round {rnd} not run: epsilon would reach {decision.projected_epsilon:.4g} "
                f"at delta {self.cfg.delta:g}, over the job's limit of {limit:g} "
                f"(spent so far: {decision.spent_epsilon:.4g})"
            )
            raise BudgetExhausted(self.stopped)

    def train_settings(self, base: TrainSettings) -> TrainSettings:
        return self.mechanism.train_settings(base)

    def client_privacy(self) -> ClientPrivacy | None:
        return self.mechanism.client_privacy()

    def begin_round(self, aggregator: Aggregator, dtype: np.dtype, state: State) -> RoundSink:
        """The round's fit sink: the aggregator wrapped in this job's mechanism."""
        return self.mechanism.open_round(
            self, lambda dt: aggregator.begin(self.dimension, dt, state), dtype
        )

    def note_seeded(self, res: FitRes) -> None:
        """Remember a site that drew its noise from a seed (simulation only): its noise
        protects nothing, and privacy.json says so by name."""
        if res.seeded_noise:
            self.seeded_sites.add(res.site)

    # -- after a round -------------------------------------------------------------------
    def end_round(self, rnd: int, agg: Any, settings: TrainSettings) -> dict[str, float]:
        """Account what the mechanism accounts after a round; return round metrics. (A
        release is accounted when its noise is drawn, in the round's ``result``.)"""
        metrics = self.mechanism.end_round(self, agg, settings)
        self.per_round.append({"round": rnd, **metrics})  # never how many took part
        return metrics

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Replay the accounting of completed rounds from their metrics rows (a resumed
        server must not forget what it already spent)."""
        self.mechanism.restore(self, history)

    # -- the report ----------------------------------------------------------------------
    def noise_source(self) -> str:
        """Where this job's privacy noise comes from, as privacy.json states it."""
        server = (
            "server: SEEDED from the job seed (reproducible; not private: debug/test only)"
            if self.seeded
            else "server: ChaCha20 (SecureRng) keyed from os.urandom"
        )
        sites = self.mechanism.site_noise_source()
        return f"{server}; {sites}, unless sites_seeded_noise says some drew from a seed"

    def outside_guarantee(self) -> list[str]:
        """What a DP job still releases that its guarantee does not cover (privacy.json)."""
        return [
            *self.mechanism.outside_guarantee(),
            "federated evaluation (evaluation.federated_every > 0): each evaluating site's "
            "exact held-out example count and metrics reach the server, and their weighted "
            "mean and spread are published unnoised (federated_* in metrics.jsonl)",
            "central evaluation: metrics of the model on the server's own test set (no site "
            "data; the model itself is covered)",
        ]

    def report(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "mode": cfg.mode,
            "delta": cfg.delta,
            "accountant_for_budget": cfg.accountant,
            "noise_source": self.noise_source(),
            # Whether any site said it drew its noise from a local seed (simulation's
            # reproducible runs; a deployed site refuses to): such noise protects nothing.
            # Which sites is in each one's own report: a list here would name participants.
            "sites_seeded_noise": bool(self.seeded_sites),
            "budget": {"epsilon_limit": cfg.epsilon_limit, "stopped": self.stopped},
            "outside_guarantee": self.outside_guarantee(),
            "threat_model": self.mechanism.threats(),
            "per_round": self.per_round,
            **self.mechanism.report_section(self),
        }

    def site_reports(self) -> dict[str, dict[str, Any]]:
        """Per site, its own participation and privacy figures, and nobody else's."""
        return self.mechanism.site_reports(self)
