"""Distributed DP: the distributed discrete Gaussian (Kairouz, Liu and Steinke 2021).

Each site clips, scales, rounds, adds its share of discrete Gaussian noise and wraps modulo
2**bits; the server decodes the modular sum once at least ``min_sites`` contributed. Rounds
are accounted as zCDP with the sites whose noise reached the sum, no credit for sampling.
Without secure aggregation the server sees each encoding, noised with one share only: that
weaker guarantee is accounted per encoding (retries included) and reported beside the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from consortia.core.config import PrivacyConfig
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.core.privacy_modes import MODES, ModeFacts
from consortia.core.rng import derive_seed
from consortia.privacy import adversary, neighbouring
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.distributed import (
    MAX_FAILED_ROUND_RATE,
    DistributedDiscreteGaussian,
    calibrate_distributed,
    choose_scale,
    default_min_sites,
    failed_round_rate,
)
from consortia.privacy.mechanisms.base import Ledger, OpenInner, RoundSink, RoundSum
from consortia.privacy.mechanisms.sampled import SampledSites
from consortia.privacy.rng import SecureRng


def site_noise(noise_seed: int | None, site_id: str, round_: int) -> SecureRng:
    """A CSPRNG keyed from the OS; from the site's own seed only in simulation.

    ``noise_seed`` is the site's, never the server's (``Site.noise_seed``): whoever knows it
    can regenerate the noise and subtract it, so it must not come from the party the
    noise hides the update from.
    """
    if noise_seed is None:
        return SecureRng()
    return SecureRng(derive_seed(noise_seed, "site-noise", round_, site_id))


def site_ddg(p: ClientPrivacy, dimension: int) -> DistributedDiscreteGaussian:
    """The mechanism the round's instructions describe, as the site rebuilds it."""
    return DistributedDiscreteGaussian(
        p.clip_norm, p.scale, p.bits, p.noise_multiplier, p.min_sites, dimension
    )


class DistributedRound:
    """The modular sum of encoded updates, decoded once enough survived, handed to the
    sum-only aggregator as the one thing the server may see."""

    def __init__(self, mech: Distributed, ledger: Ledger, inner: RoundSum, dtype: np.dtype) -> None:
        self._mech = mech
        self._ddg = mech.ddg
        self._ledger = ledger
        self._inner = inner
        self._sum = np.zeros(mech.dimension, np.uint64)
        self._dtype = dtype
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        # Both terms are < 2**62, so the uint64 addition cannot overflow before the mod.
        np.add(self._sum, res.delta, out=self._sum)
        np.mod(self._sum, np.uint64(self._ddg.modulus), out=self._sum)
        self.contributors.append((res.site, res.num_examples))
        self._ledger.note_seeded(res)
        # Without secure aggregation the server has just seen this encoding, noised with
        # this site's share alone: a release against the server, retries included.
        seen = self._ledger.encodings_seen
        seen[res.site] = seen.get(res.site, 0) + 1

    def add_sum(self, modular_sum: np.ndarray, sites: list[str]) -> None:
        """Secure aggregation's unmasked sum of ``sites``' encodings: the server never saw
        one of them, so none counts as seen."""
        np.add(self._sum, np.asarray(modular_sum, np.uint64), out=self._sum)
        np.mod(self._sum, np.uint64(self._ddg.modulus), out=self._sum)
        self.contributors.extend((site, 0) for site in sites)

    def result(self) -> tuple[np.ndarray, dict[str, Any]]:
        n, need = len(self.contributors), self._ddg.min_sites
        if n < need:
            raise RoundFailedError(
                f"distributed DP: {n} sites contributed, {need} needed; their noise shares "
                "would sum to too little noise, so this round's sum is not released"
            )
        # The sum is released from here on: accounted now, whatever happens to the round.
        self._ledger.accountant.extend(self._mech.round_events(n))
        self._inner.add("(sum)", self._ddg.decode(self._sum).astype(np.float64), 1.0, {})
        total, state = self._inner.result()
        return (total / self._mech.expected_sites).astype(self._dtype), state


class Distributed(SampledSites):
    """privacy.mode = "distributed"."""

    facts: ClassVar[ModeFacts] = MODES["distributed"]
    name: ClassVar[str] = facts.name
    unit: ClassVar[str] = facts.unit
    neighbouring: ClassVar[str] = neighbouring.DISTRIBUTED
    # Without secure aggregation the server sees each site's encoding; a job that runs it
    # switches to the statement with it (``use_secure_aggregation``).
    threat_model: ClassVar[Mapping[str, list[str]]] = (
        adversary.DISTRIBUTED_WITHOUT_SECURE_AGGREGATION
    )
    secure_aggregation = False

    def use_secure_aggregation(self) -> None:
        self.secure_aggregation = True

    def threats(self) -> dict[str, list[str]]:
        if not self.secure_aggregation:
            return self.threat_statement()
        return {k: list(v) for k, v in adversary.DISTRIBUTED_WITH_SECURE_AGGREGATION.items()}

    def __init__(
        self, cfg: PrivacyConfig, *, eligible_sites: int, dimension: int, rounds: int
    ) -> None:
        super().__init__(cfg, eligible_sites=eligible_sites, dimension=dimension, rounds=rounds)
        sample_rate = self.sample_rate
        min_sites = cfg.min_sites or default_min_sites(eligible_sites, sample_rate)
        self.failed_round_rate = failed_round_rate(min_sites, eligible_sites, sample_rate)
        if self.failed_round_rate >= MAX_FAILED_ROUND_RATE:
            self.notices.append(
                f"privacy.min_sites = {min_sites}: with {eligible_sites} eligible sites "
                f"sampled at rate {sample_rate:g}, about {self.failed_round_rate:.2%} "
                "of rounds will have fewer contributions and fail (expected failure rate "
                "per round; lower min_sites or raise sample_rate to make it rarer)"
            )
        clip_norm, bits = self.clip_norm, cfg.bits

        def build(z: float) -> DistributedDiscreteGaussian:
            scale = choose_scale(
                clip_norm=clip_norm,
                bits=bits,
                max_sites=eligible_sites,
                noise_multiplier=z,
                min_sites=min_sites,
                dimension=dimension,
            )
            return DistributedDiscreteGaussian(clip_norm, scale, bits, z, min_sites, dimension)

        if cfg.noise_multiplier is not None:
            self.noise_multiplier = cfg.noise_multiplier
        else:
            # The mechanism the rounds are accounted as (zCDP, no sampling credit, the
            # worst number of contributors), not a Poisson-sampled Gaussian.
            assert cfg.target_epsilon is not None
            self.noise_multiplier = calibrate_distributed(
                cfg.target_epsilon, cfg.delta, rounds, build, eligible_sites
            )
        self.ddg = build(self.noise_multiplier)
        self.update_noise_multiplier = self.noise_multiplier

    @classmethod
    def check_job(cls, cfg: PrivacyConfig, *, deployed: bool) -> None:
        super().check_job(cfg, deployed=deployed)
        if deployed and not cfg.allow_without_secure_aggregation:
            raise ConfigError(
                "privacy.allow_without_secure_aggregation: without secure aggregation the "
                "server sees each site's encoded update, which carries only that site's share "
                "of the noise (multiplier z/sqrt(min_sites) against the server); set it to "
                "true to run distributed DP with that weaker guarantee, stated in privacy.json"
            )

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
        ddg = site_ddg(p, update.size)
        encoded = ddg.encode(update, site_noise(noise_seed, site_id, round_))
        return encoded, None, noise_seed is not None

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
        return [site_ddg(p, dimension).privacy_event(p.min_sites, count=rounds)]

    # -- the server's side -----------------------------------------------------------------
    def _client_extras(self) -> dict[str, Any]:
        return {"scale": self.ddg.scale, "bits": self.ddg.bits, "min_sites": self.ddg.min_sites}

    @property
    def modulus_bits(self) -> int:
        return self.ddg.bits

    @property
    def min_replies(self) -> int:
        return self.ddg.min_sites

    def round_events(self, surviving: int | None = None) -> list[PrivacyEvent]:
        """One round released with ``surviving`` sites' noise (default: the fewest)."""
        return [self.ddg.privacy_event(surviving or self.ddg.min_sites)]

    def open_round(self, ledger: Ledger, open_inner: OpenInner, dtype: np.dtype) -> RoundSink:
        return DistributedRound(self, ledger, open_inner(np.dtype(np.float64)), dtype)

    # -- the report ------------------------------------------------------------------------
    def _mechanism_fields(self) -> dict[str, Any]:
        return {
            "name": "distributed discrete Gaussian (Kairouz et al. 2021)",
            "bits": self.ddg.bits,
            "scale": self.ddg.scale,
            "min_sites": self.ddg.min_sites,
            "expected_failed_round_rate": self.failed_round_rate,
            "note": "each round accounted with the sites whose noise reached the sum; "
            "no credit taken for sampling",
        }

    def _guarantees(self, ledger: Ledger, epsilon: dict[str, Any]) -> dict[str, Any]:
        if self.secure_aggregation:
            return {
                "guarantees": {
                    "against_readers_of_the_model": self._readers(epsilon),
                    "against_the_server": {
                        **self._readers(epsilon),
                        "secure_aggregation": True,
                        "note": "the server received masked inputs only and unmasked each "
                        "round's sum, never one encoding: it sees what readers of the model "
                        "see, so the same guarantee holds against it (honest sites; see "
                        "threat_model)",
                    },
                }
            }
        return {
            "guarantees": {
                "against_readers_of_the_model": self._readers(epsilon),
                "against_the_server": self.server_view_report(ledger),
            }
        }

    def _readers(self, epsilon: dict[str, Any]) -> dict[str, Any]:
        return {"epsilon": epsilon, "delta": self.cfg.delta, "unit": "site"}

    def server_view_report(self, ledger: Ledger) -> dict[str, Any]:
        """Without secure aggregation: what the server itself learns.

        It sees each encoding, noised with one site's share: a discrete Gaussian with
        multiplier z/sqrt(min_sites), i.e. rho(1) per encoding, never amplified by sampling
        (the server does the sampling). The worst site is the one that sent the most.
        """
        m = self.ddg
        most = max(ledger.encodings_seen.values(), default=0)
        eps = 0.0
        if most:
            event = m.privacy_event(1, count=most, label="one site's encoding")
            eps = PrivacyAccountant([event]).epsilon_by("rdp", self.cfg.delta) or math.inf
        return {
            "secure_aggregation": False,
            "noise_multiplier_per_site": m.noise_multiplier / math.sqrt(m.min_sites),
            "rho_per_encoding": m.rho(1),
            "encodings_seen_max": most,
            "epsilon": eps,
            "delta": self.cfg.delta,
            "unit": "site",
            "note": "each encoding the server received (retried rounds included) is one "
            "release of that site's update with its own noise share only",
        }
