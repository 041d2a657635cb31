"""Local DP: each site trains with DP-SGD (Opacus; example-level DP on its own records).

The server adds no noise and aggregates the sites' updates as they are. It accounts each
site's DP-SGD from the example count the site reports (listed in privacy.json as outside
the guarantee); each site's figures go to its own report only. The job's epsilon limit
does not apply (the spend is per site): sites' own policies are the guard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from consortia.core.config import PrivacyConfig
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.core.privacy_modes import MODES, ModeFacts
from consortia.privacy import adversary, neighbouring
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.mechanisms.base import Ledger, Mechanism, OpenInner, RoundSink, RoundSum


class LocalRound:
    """The sites' DP-SGD updates into the aggregator as they are, weighted by examples
    (as the strategy's plain ``FitSink``); notes which sites drew their noise from a seed."""

    def __init__(self, ledger: Ledger, inner: RoundSum) -> None:
        self._ledger = ledger
        self._inner = inner
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        self._inner.add(res.site, res.delta, res.num_examples, res.metrics)
        self.contributors.append((res.site, res.num_examples))
        self._ledger.note_seeded(res)

    def result(self) -> tuple[np.ndarray, dict[str, Any]]:
        if not any(n > 0 for _, n in self.contributors):
            raise RoundFailedError("no replying site had any training examples")
        return self._inner.result()


def dp_sgd_steps(settings: TrainSettings, num_examples: int) -> tuple[float, int]:
    """(Poisson batch rate, steps) of one round of a site's DP-SGD."""
    batch = min(settings.batch_size, num_examples)
    return batch / num_examples, settings.local_epochs * (num_examples // batch)


class Local(Mechanism):
    """privacy.mode = "local"."""

    facts: ClassVar[ModeFacts] = MODES["local"]
    name: ClassVar[str] = facts.name
    unit: ClassVar[str] = facts.unit
    neighbouring: ClassVar[str] = neighbouring.LOCAL_DP_SGD
    threat_model: ClassVar[Mapping[str, list[str]]] = adversary.LOCAL
    level: ClassVar[str] = "example (each site's own records)"
    server_budget: ClassVar[bool] = False

    def __init__(
        self, cfg: PrivacyConfig, *, eligible_sites: int, dimension: int, rounds: int
    ) -> None:
        super().__init__(cfg, eligible_sites=eligible_sites, dimension=dimension, rounds=rounds)
        self.expected_sites = float(eligible_sites)
        self.site_accountants: dict[str, PrivacyAccountant] = {}
        self._site_figures: tuple[int, dict[str, dict[str, Any]]] = (-1, {})

    # -- the site's side -------------------------------------------------------------------
    @classmethod
    def applies(cls, p: ClientPrivacy | None, settings: TrainSettings) -> bool:
        """A round is local DP when it asks the site to train with DP-SGD (and nothing
        else: instructions for a site-level mode take precedence)."""
        return p is None and settings.local_dp

    @classmethod
    def privatize(
        cls,
        reply: FitRes,
        p: ClientPrivacy | None,
        site_id: str,
        round_: int,
        noise_seed: int | None,
    ) -> FitRes:
        """DP-SGD already noised the update; the count stays (the server accounts each
        site's DP-SGD from it), the exact training metrics go (never noised or accounted)."""
        return replace(reply, metrics={})

    @classmethod
    def site_events(
        cls,
        p: ClientPrivacy | None,
        settings: TrainSettings,
        num_examples: int,
        rounds: int,
        dimension: int,
    ) -> list[PrivacyEvent]:
        if not settings.local_dp or num_examples <= 0:
            return []
        rate, steps = dp_sgd_steps(settings, num_examples)
        return [PrivacyEvent("gaussian", settings.dp_noise_multiplier, rate, rounds * steps)]

    # -- the server's side -----------------------------------------------------------------
    def train_settings(self, base: TrainSettings) -> TrainSettings:
        assert self.cfg.local_noise_multiplier is not None
        return replace(
            base,
            dp_noise_multiplier=self.cfg.local_noise_multiplier,
            dp_max_grad_norm=self.cfg.local_max_grad_norm,
        )

    def open_round(self, ledger: Ledger, open_inner: OpenInner, dtype: np.dtype) -> RoundSink:
        return LocalRound(ledger, open_inner(dtype))

    def end_round(self, ledger: Ledger, agg: Any, settings: TrainSettings) -> dict[str, float]:
        for site, n in agg.contributors:
            if n <= 0:
                continue
            rate, steps = dp_sgd_steps(settings, n)
            acc = self.site_accountants.setdefault(site, PrivacyAccountant())
            acc.record_gaussian(settings.dp_noise_multiplier, rate, steps, label="dp-sgd")
        worst = max(
            (
                a.epsilon_by("rdp", self.cfg.delta) or math.inf
                for a in self.site_accountants.values()
            ),
            default=0.0,
        )
        return {"local_epsilon_max": worst}

    def restore(self, ledger: Ledger, history: list[dict[str, Any]]) -> None:
        raise ConfigError(
            "resuming a local-DP job is not supported: its per-site accounting is not "
            "in the server's store; start the job afresh"
        )

    # -- the report ------------------------------------------------------------------------
    def site_noise_source(self) -> str:
        return (
            "sites: each site's own ChaCha20 (SecureRng) keyed from its os.urandom, for "
            "DP-SGD's Gaussian noise and its Poisson batch sampling (not torch's Mersenne "
            "Twister)"
        )

    def outside_guarantee(self) -> list[str]:
        return [
            "each site's exact number of training examples reaches the server, which "
            "accounts the site's DP-SGD from it; not published, but not covered by the "
            "example-level guarantee",
        ]

    def report_section(self, ledger: Ledger) -> dict[str, Any]:
        return {
            "level": self.level,
            "neighbouring": self.neighbouring,
            "mechanism": {
                "name": "DP-SGD (Opacus): per-example clipping + Gaussian noise",
                "noise_multiplier": self.cfg.local_noise_multiplier,
                "max_grad_norm": self.cfg.local_max_grad_norm,
                "sampling": "Poisson batches at batch_size / site examples",
            },
            # Each site's own figures go to its own report (site_reports()), not here.
            "epsilon_max_over_sites": max(
                (r["epsilon"]["best"] or math.inf for r in self._figures(ledger).values()),
                default=0.0,
            ),
        }

    def _figures(self, ledger: Ledger) -> dict[str, dict[str, Any]]:
        """Each site's epsilon and events, computed once per completed round (the report
        and the site reports both need them, and PLD takes a while per site)."""
        if self._site_figures[0] != len(ledger.per_round):
            figures = {
                site: {
                    "epsilon": acc.epsilon(self.cfg.delta),
                    "events": acc.to_dict()["events"],
                }
                for site, acc in sorted(self.site_accountants.items())
            }
            self._site_figures = (len(ledger.per_round), figures)
        return self._site_figures[1]

    def site_reports(self, ledger: Ledger) -> dict[str, dict[str, Any]]:
        return {
            site: {
                "site": site,
                "mode": self.name,
                "delta": self.cfg.delta,
                "unit": self.unit,
                "seeded_noise": site in ledger.seeded_sites,
                **figures,
            }
            for site, figures in self._figures(ledger).items()
        }
