"""Central DP: DP-FedAvg (McMahan et al. 2018), with adaptive clipping as an option
(Andrew et al. 2021).

Sites clip; the server, trusted, clips again, sums with weight 1 each, adds Gaussian noise
z*C to the sum and divides by the fixed q*N. Each round is a Poisson-subsampled Gaussian,
accounted when its noise is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from consortia.core.config import PrivacyConfig
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.core.privacy_modes import MODES, ModeFacts
from consortia.privacy import adversary, neighbouring
from consortia.privacy.accountant import PrivacyEvent, calibrate
from consortia.privacy.central import (
    AdaptiveClipping,
    clip_update,
    noisy_mean,
    split_noise_multiplier,
)
from consortia.privacy.mechanisms.base import Ledger, OpenInner, RoundSink, RoundSum
from consortia.privacy.mechanisms.sampled import SampledSites


class CentralRound:
    """DP-FedAvg: clipped updates, each of weight 1, into the sum-only aggregator; Gaussian
    noise on their sum; the fixed denominator q*N."""

    def __init__(
        self, mech: Central, ledger: Ledger, inner: RoundSum, dimension: int, dtype: np.dtype
    ) -> None:
        self._mech = mech
        self._ledger = ledger
        self._inner = inner
        self._dimension = dimension
        self._dtype = dtype
        self.bits = 0.0
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        # Sites clip; clipping again here means a site that did not cannot exceed the
        # sensitivity the noise is calibrated for (the server is trusted in central DP).
        clipped = clip_update(res.delta, self._mech.clip_norm).vector.astype(np.float64)
        self._inner.add(res.site, clipped, 1.0, res.metrics)
        self.bits += res.clip_bit if res.clip_bit is not None else -0.5
        self.contributors.append((res.site, res.num_examples))
        self._ledger.note_seeded(res)

    def result(self) -> tuple[np.ndarray, dict[str, Any]]:
        m = self._mech
        n = len(self.contributors)
        state: dict[str, Any]
        if n:
            mean, state = self._inner.result()
            total = mean.astype(np.float64) * n  # a sum-only aggregator's mean, back to the sum
        else:  # Poisson sampling chose nobody: the release is noise alone
            total, state = np.zeros(self._dimension, np.float64), {}
        noised = noisy_mean(
            total,
            noise_multiplier=m.update_noise_multiplier,
            clip_norm=m.clip_norm,
            expected_sites=m.expected_sites,
            rng=self._ledger.rng,
        )
        # Accounted when drawn: if the round then fails (diverges, cannot be committed) and
        # is tried again, that attempt's release still counts.
        self._ledger.accountant.extend(m.round_events())
        return noised.astype(self._dtype), state


class Central(SampledSites):
    """privacy.mode = "central"."""

    facts: ClassVar[ModeFacts] = MODES["central"]
    name: ClassVar[str] = facts.name
    unit: ClassVar[str] = facts.unit
    neighbouring: ClassVar[str] = neighbouring.CENTRAL
    threat_model: ClassVar[Mapping[str, list[str]]] = adversary.CENTRAL

    def __init__(
        self, cfg: PrivacyConfig, *, eligible_sites: int, dimension: int, rounds: int
    ) -> None:
        super().__init__(cfg, eligible_sites=eligible_sites, dimension=dimension, rounds=rounds)
        if cfg.noise_multiplier is not None:
            self.noise_multiplier = cfg.noise_multiplier
        else:
            assert cfg.target_epsilon is not None
            self.noise_multiplier = calibrate(
                cfg.target_epsilon, cfg.delta, self.sample_rate, rounds, accountant=cfg.accountant
            )
        self.update_noise_multiplier = self.noise_multiplier
        self.adaptive: AdaptiveClipping | None = None
        if cfg.adaptive_clipping is not None:
            ac = cfg.adaptive_clipping
            sigma_b = ac.count_stddev or self.expected_sites / 20
            self.adaptive = AdaptiveClipping(ac.target_quantile, ac.learning_rate, sigma_b)
            self.update_noise_multiplier = split_noise_multiplier(self.noise_multiplier, sigma_b)

    # -- the site's side -------------------------------------------------------------------
    @classmethod
    def transform(
        cls,
        update: np.ndarray,
        p: ClientPrivacy,
        site_id: str,
        round_: int,
        noise_seed: int | None,
    ) -> tuple[np.ndarray, float | None, bool]:
        clipped = clip_update(update, p.clip_norm)
        return clipped.vector.astype(update.dtype, copy=False), clipped.unclipped_bit, False

    @classmethod
    def site_events(
        cls,
        p: ClientPrivacy | None,
        settings: TrainSettings,
        num_examples: int,
        rounds: int,
        dimension: int,
    ) -> list[PrivacyEvent]:
        if p is None or not cls.applies(p, settings):
            return []
        return [PrivacyEvent("gaussian", p.noise_multiplier, p.sample_rate, rounds)]

    # -- the server's side -----------------------------------------------------------------
    def round_events(self, surviving: int | None = None) -> list[PrivacyEvent]:
        return [PrivacyEvent("gaussian", self.noise_multiplier, self.sample_rate, 1)]

    def open_round(self, ledger: Ledger, open_inner: OpenInner, dtype: np.dtype) -> RoundSink:
        return CentralRound(self, ledger, open_inner(np.dtype(np.float64)), self.dimension, dtype)

    def end_round(self, ledger: Ledger, agg: Any, settings: TrainSettings) -> dict[str, float]:
        metrics = super().end_round(ledger, agg, settings)
        if self.adaptive is not None:
            self.clip_norm, b_hat = self.adaptive.next_clip_norm(
                self.clip_norm, agg.bits, expected_sites=self.expected_sites, rng=ledger.rng
            )
            metrics["clip_norm"] = self.clip_norm
            metrics["unclipped_fraction"] = b_hat
        return metrics

    def _restore_row(self, row: dict[str, Any]) -> None:
        if self.adaptive is not None and "clip_norm" in row:
            self.clip_norm = float(row["clip_norm"])

    # -- the report ------------------------------------------------------------------------
    def _mechanism_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": "DP-FedAvg: clipped updates, Gaussian noise z*C on the sum, / (q N)"
        }
        if self.adaptive is not None:
            out["adaptive_clipping"] = {
                "target_quantile": self.adaptive.target_quantile,
                "learning_rate": self.adaptive.learning_rate,
                "count_stddev": self.adaptive.count_stddev,
                "update_noise_multiplier": self.update_noise_multiplier,
            }
        return out
