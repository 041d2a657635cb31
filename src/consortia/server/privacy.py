"""Server side of differential privacy: it wraps the round's aggregation, never forks the loop.

``PrivacyController`` turns a job's [privacy] section into, per round: a budget check
before anything is sent, the instructions sites follow (clip; or clip, round and add a
noise share), the aggregate that replaces the plain weighted mean (DP-FedAvg's noised
fixed-denominator mean, or the modular sum of distributed DP), and the accountant events
recorded once the round's model is released.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from consortia.core.config import PrivacyConfig
from consortia.core.errors import BudgetExhausted, ConfigError, RoundFailedError
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.core.rng import derive_seed
from consortia.privacy import adversary, neighbouring
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent, calibrate
from consortia.privacy.central import (
    AdaptiveClipping,
    clip_update,
    noisy_mean,
    split_noise_multiplier,
)
from consortia.privacy.distributed import (
    MAX_FAILED_ROUND_RATE,
    DistributedDiscreteGaussian,
    calibrate_distributed,
    choose_scale,
    default_min_sites,
    failed_round_rate,
)
from consortia.privacy.rng import SecureRng
from consortia.strategy.aggregators import Aggregator, FitSink, RoundAggregate, State

__all__ = ["BudgetExhausted", "PrivacyController"]


class CentralRound:
    """DP-FedAvg: clipped updates, each of weight 1, into the sum-only aggregator; Gaussian
    noise on their sum; the fixed denominator q*N."""

    def __init__(self, ctl: PrivacyController, inner: RoundAggregate, dtype: np.dtype) -> None:
        self._ctl = ctl
        self._inner = inner
        self._dtype = dtype
        self.bits = 0.0
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        # Sites clip; clipping again here means a site that did not cannot exceed the
        # sensitivity the noise is calibrated for (the server is trusted in central DP).
        clipped = clip_update(res.delta, self._ctl.clip_norm).vector.astype(np.float64)
        self._inner.add(res.site, clipped, 1.0, res.metrics)
        self.bits += res.clip_bit if res.clip_bit is not None else -0.5
        self.contributors.append((res.site, res.num_examples))
        self._ctl.note_seeded(res)

    def result(self) -> tuple[np.ndarray, State]:
        c = self._ctl
        n = len(self.contributors)
        if n:
            mean, state = self._inner.result()
            total = mean.astype(np.float64) * n  # a sum-only aggregator's mean, back to the sum
        else:  # Poisson sampling chose nobody: the release is noise alone
            total, state = np.zeros(c.dimension, np.float64), {}
        noised = noisy_mean(
            total,
            noise_multiplier=c.update_noise_multiplier,
            clip_norm=c.clip_norm,
            expected_sites=c.expected_sites,
            rng=c.rng,
        )
        # Accounted when drawn: if the round then fails (diverges, cannot be committed) and
        # is tried again, that attempt's release still counts.
        c.accountant.extend(c.round_events())
        return noised.astype(self._dtype), state


class DistributedRound:
    """Distributed DP: the modular sum of encoded updates, decoded once enough survived,
    handed to the sum-only aggregator as the one thing the server may see."""

    def __init__(self, ctl: PrivacyController, inner: RoundAggregate, dtype: np.dtype) -> None:
        assert ctl.mechanism is not None
        self._ctl = ctl
        self._mech = ctl.mechanism
        self._inner = inner
        self._sum = np.zeros(ctl.dimension, np.uint64)
        self._dtype = dtype
        self.contributors: list[tuple[str, int]] = []

    def add(self, res: FitRes) -> None:
        # Both terms are < 2**62, so the uint64 addition cannot overflow before the mod.
        np.add(self._sum, res.delta, out=self._sum)
        np.mod(self._sum, np.uint64(self._mech.modulus), out=self._sum)
        self.contributors.append((res.site, res.num_examples))
        self._ctl.note_seeded(res)
        # Without secure aggregation the server has just seen this encoding, noised with
        # this site's share alone: a release against the server, retries included.
        self._ctl.encodings_seen[res.site] = self._ctl.encodings_seen.get(res.site, 0) + 1

    def result(self) -> tuple[np.ndarray, State]:
        n, need = len(self.contributors), self._mech.min_sites
        if n < need:
            raise RoundFailedError(
                f"distributed DP: {n} sites contributed, {need} needed; their noise shares "
                "would sum to too little noise, so this round's sum is not released"
            )
        # The sum is released from here on: accounted now, whatever happens to the round.
        self._ctl.accountant.extend(self._ctl.round_events(n))
        self._inner.add("(sum)", self._mech.decode(self._sum).astype(np.float64), 1.0, {})
        total, state = self._inner.result()
        return (total / self._ctl.expected_sites).astype(self._dtype), state


class LocalRound(FitSink):
    """Local DP: the sites' DP-SGD updates into the aggregator as they are; the controller
    notes which sites say they drew their noise from a seed."""

    def __init__(self, ctl: PrivacyController, inner: RoundAggregate) -> None:
        super().__init__(inner)
        self._ctl = ctl

    def add(self, res: FitRes) -> None:
        super().add(res)
        self._ctl.note_seeded(res)


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
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.seeded = seeded
        self.rng = SecureRng(derive_seed(seed, "server-noise")) if seeded else SecureRng()
        self.accountant = PrivacyAccountant()
        self.site_accountants: dict[str, PrivacyAccountant] = {}
        self.participation: dict[str, int] = {}
        self.seeded_sites: set[str] = set()
        self.encodings_seen: dict[str, int] = {}
        self.per_round: list[dict[str, Any]] = []
        self._site_figures: tuple[int, dict[str, dict[str, Any]]] = (-1, {})
        self.stopped: str | None = None
        self.eligible_sites = eligible_sites
        self.dimension = dimension
        self.mechanism: DistributedDiscreteGaussian | None = None
        self.adaptive: AdaptiveClipping | None = None
        # What the job should be told when it starts (the run driver logs and publishes it).
        self.notices: list[str] = []
        self.failed_round_rate = 0.0
        if cfg.mode == "local":
            self.noise_multiplier = self.update_noise_multiplier = 0.0
            self.clip_norm = self.initial_clip_norm = 0.0
            self.expected_sites = float(eligible_sites)
            return
        assert cfg.sample_rate is not None and cfg.clip_norm is not None
        self.sample_rate = cfg.sample_rate
        self.expected_sites = cfg.sample_rate * eligible_sites
        if cfg.noise_multiplier is not None:
            self.noise_multiplier = cfg.noise_multiplier
        elif cfg.mode == "central":
            assert cfg.target_epsilon is not None
            self.noise_multiplier = calibrate(
                cfg.target_epsilon, cfg.delta, cfg.sample_rate, rounds, accountant=cfg.accountant
            )
        else:
            self.noise_multiplier = 0.0  # distributed: calibrated below, with its mechanism
        self.clip_norm = self.initial_clip_norm = cfg.clip_norm
        self.update_noise_multiplier = self.noise_multiplier
        if cfg.adaptive_clipping is not None:
            ac = cfg.adaptive_clipping
            sigma_b = ac.count_stddev or self.expected_sites / 20
            self.adaptive = AdaptiveClipping(ac.target_quantile, ac.learning_rate, sigma_b)
            self.update_noise_multiplier = split_noise_multiplier(self.noise_multiplier, sigma_b)
        if cfg.mode == "distributed":
            min_sites = cfg.min_sites or default_min_sites(eligible_sites, cfg.sample_rate)
            self.failed_round_rate = failed_round_rate(min_sites, eligible_sites, cfg.sample_rate)
            if self.failed_round_rate >= MAX_FAILED_ROUND_RATE:
                self.notices.append(
                    f"privacy.min_sites = {min_sites}: with {eligible_sites} eligible sites "
                    f"sampled at rate {cfg.sample_rate:g}, about {self.failed_round_rate:.2%} "
                    "of rounds will have fewer contributions and fail (expected failure rate "
                    "per round; lower min_sites or raise sample_rate to make it rarer)"
                )
            clip_norm, bits = cfg.clip_norm, cfg.bits

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

            if cfg.noise_multiplier is None:
                # The mechanism the rounds are accounted as (zCDP, no sampling credit, the
                # worst number of contributors), not a Poisson-sampled Gaussian.
                assert cfg.target_epsilon is not None
                self.noise_multiplier = calibrate_distributed(
                    cfg.target_epsilon, cfg.delta, rounds, build, eligible_sites
                )
            self.mechanism = build(self.noise_multiplier)
            self.update_noise_multiplier = self.noise_multiplier

    # -- before a round ----------------------------------------------------------------
    def round_events(self, surviving: int | None = None) -> list[PrivacyEvent]:
        """What releasing one more round costs (distributed: with ``surviving`` sites)."""
        if self.cfg.mode == "central":
            return [PrivacyEvent("gaussian", self.noise_multiplier, self.sample_rate, 1)]
        if self.mechanism is not None:
            return [self.mechanism.privacy_event(surviving or self.mechanism.min_sites)]
        return []

    def epsilon(self, extra: list[PrivacyEvent] | None = None) -> float | None:
        return self.accountant.epsilon_by(self.cfg.accountant, self.cfg.delta, extra or [])

    def before_round(self, rnd: int) -> None:
        limit = self.cfg.epsilon_limit
        if limit is None or self.cfg.mode == "local":
            return
        projected = self.epsilon(self.round_events())
        if projected is None or projected > limit:
            self.stopped = (
                f"round {rnd} not run: epsilon would reach {projected:.4g} at delta "
                f"{self.cfg.delta:g}, over the job's limit of {limit:g} "
                f"(spent so far: {self.epsilon() or 0.0:.4g})"
            )
            raise BudgetExhausted(self.stopped)

    def train_settings(self, base: TrainSettings) -> TrainSettings:
        if self.cfg.mode != "local":
            return base
        assert self.cfg.local_noise_multiplier is not None
        return replace(
            base,
            dp_noise_multiplier=self.cfg.local_noise_multiplier,
            dp_max_grad_norm=self.cfg.local_max_grad_norm,
        )

    def client_privacy(self) -> ClientPrivacy | None:
        if self.cfg.mode == "local":
            return None
        m = self.mechanism
        return ClientPrivacy(
            mode=self.cfg.mode,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            delta=self.cfg.delta,
            scale=m.scale if m else 0.0,
            bits=m.bits if m else 0,
            min_sites=m.min_sites if m else 0,
        )

    @property
    def modulus_bits(self) -> int:
        return self.mechanism.bits if self.mechanism is not None else 0

    @property
    def min_replies(self) -> int:
        return self.mechanism.min_sites if self.mechanism is not None else 0

    def begin_round(self, aggregator: Aggregator, dtype: np.dtype, state: State) -> Any:
        """The round's fit sink: the aggregator wrapped in this job's mechanism."""
        if self.cfg.mode == "central":
            inner = aggregator.begin(self.dimension, np.dtype(np.float64), state)
            return CentralRound(self, inner, dtype)
        if self.cfg.mode == "distributed":
            inner = aggregator.begin(self.dimension, np.dtype(np.float64), state)
            return DistributedRound(self, inner, dtype)
        return LocalRound(self, aggregator.begin(self.dimension, dtype, state))

    def note_seeded(self, res: FitRes) -> None:
        """Remember a site that drew its noise from a seed (simulation only): its noise
        protects nothing, and privacy.json says so by name."""
        if res.seeded_noise:
            self.seeded_sites.add(res.site)

    # -- after a round -------------------------------------------------------------------
    def end_round(self, rnd: int, agg: Any, settings: TrainSettings) -> dict[str, float]:
        """Adapt the clip norm; return round metrics. (The release was accounted when its
        noise was drawn, in the round's ``result``.)"""
        metrics: dict[str, float] = {}
        if self.cfg.mode == "local":
            for site, n in agg.contributors:
                if n <= 0:
                    continue
                batch = min(settings.batch_size, n)
                steps = settings.local_epochs * (n // batch)
                acc = self.site_accountants.setdefault(site, PrivacyAccountant())
                acc.record_gaussian(settings.dp_noise_multiplier, batch / n, steps, label="dp-sgd")
            worst = max(
                (
                    a.epsilon_by("rdp", self.cfg.delta) or math.inf
                    for a in self.site_accountants.values()
                ),
                default=0.0,
            )
            metrics["local_epsilon_max"] = worst
        else:
            for site, _ in agg.contributors:
                self.participation[site] = self.participation.get(site, 0) + 1
            metrics["epsilon"] = self.epsilon() or math.inf
            if self.adaptive is not None:
                self.clip_norm, b_hat = self.adaptive.next_clip_norm(
                    self.clip_norm, agg.bits, expected_sites=self.expected_sites, rng=self.rng
                )
                metrics["clip_norm"] = self.clip_norm
                metrics["unclipped_fraction"] = b_hat
        self.per_round.append({"round": rnd, **metrics})  # never how many took part
        return metrics

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Replay the accounting of completed rounds from their metrics rows (a resumed
        server must not forget what it already spent)."""
        if self.cfg.mode == "local":
            raise ConfigError(
                "resuming a local-DP job is not supported: its per-site accounting is not "
                "in the server's store; start the job afresh"
            )
        for row in history:
            self.accountant.extend(self.round_events(int(row["replies"])))
            if self.adaptive is not None and "clip_norm" in row:
                self.clip_norm = float(row["clip_norm"])
            self.per_round.append(
                {"round": row["round"], **{k: row[k] for k in ("epsilon", "clip_norm") if k in row}}
            )

    # -- the report ----------------------------------------------------------------------
    def server_view_report(self) -> dict[str, Any]:
        """Distributed DP without secure aggregation: what the server itself learns.

        It sees each encoding, noised with one site's share: a discrete Gaussian with
        multiplier z/sqrt(min_sites), i.e. rho(1) per encoding, never amplified by sampling
        (the server does the sampling). The worst site is the one that sent the most.
        """
        assert self.mechanism is not None
        m = self.mechanism
        most = max(self.encodings_seen.values(), default=0)
        rho = m.rho(1)
        eps = 0.0
        if most:
            event = m.privacy_event(1, count=most, label="one site's encoding")
            eps = PrivacyAccountant([event]).epsilon_by("rdp", self.cfg.delta) or math.inf
        return {
            "secure_aggregation": False,
            "noise_multiplier_per_site": m.noise_multiplier / math.sqrt(m.min_sites),
            "rho_per_encoding": rho,
            "encodings_seen_max": most,
            "epsilon": eps,
            "delta": self.cfg.delta,
            "unit": "site",
            "note": "each encoding the server received (retried rounds included) is one "
            "release of that site's update with its own noise share only",
        }

    def noise_source(self) -> str:
        """Where this job's privacy noise comes from, as privacy.json states it."""
        server = (
            "server: SEEDED from the job seed (reproducible; not private: debug/test only)"
            if self.seeded
            else "server: ChaCha20 (SecureRng) keyed from os.urandom"
        )
        sites = (
            "sites: each site's own ChaCha20 (SecureRng) keyed from its os.urandom, for "
            "DP-SGD's Gaussian noise and its Poisson batch sampling (not torch's Mersenne "
            "Twister)"
            if self.cfg.mode == "local"
            else "sites: each site's own ChaCha20 (SecureRng) keyed from its os.urandom"
        )
        return f"{server}; {sites}, unless sites_seeded_noise says some drew from a seed"

    def outside_guarantee(self) -> list[str]:
        """What a DP job still releases that its guarantee does not cover (privacy.json)."""
        out = [
            "federated evaluation (evaluation.federated_every > 0): each evaluating site's "
            "exact held-out example count and metrics reach the server, and their weighted "
            "mean and spread are published unnoised (federated_* in metrics.jsonl)",
            "central evaluation: metrics of the model on the server's own test set (no site "
            "data; the model itself is covered)",
        ]
        if self.cfg.mode == "local":
            out.insert(
                0,
                "each site's exact number of training examples reaches the server, which "
                "accounts the site's DP-SGD from it; not published, but not covered by the "
                "example-level guarantee",
            )
        return out

    def report(self) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
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
            "threat_model": adversary.threat_model(cfg.mode),
            "per_round": self.per_round,
        }
        if cfg.mode == "local":
            out["level"] = "example (each site's own records)"
            out["neighbouring"] = neighbouring.LOCAL_DP_SGD
            out["mechanism"] = {
                "name": "DP-SGD (Opacus): per-example clipping + Gaussian noise",
                "noise_multiplier": cfg.local_noise_multiplier,
                "max_grad_norm": cfg.local_max_grad_norm,
                "sampling": "Poisson batches at batch_size / site examples",
            }
            # Each site's own figures go to its own report (site_reports()), not here.
            out["epsilon_max_over_sites"] = max(
                (r["epsilon"]["best"] or math.inf for r in self._local_site_figures().values()),
                default=0.0,
            )
            return out
        out["level"] = "site (one site's whole contribution)"
        out["neighbouring"] = (
            neighbouring.CENTRAL if cfg.mode == "central" else neighbouring.DISTRIBUTED
        )
        out["sampling"] = {
            "kind": "poisson",
            "rate": self.sample_rate,
            "eligible_sites": self.eligible_sites,
            "expected_sites": self.expected_sites,
        }
        mech: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "calibrated_for_epsilon": cfg.target_epsilon,
            "clip_norm_initial": self.initial_clip_norm,
            "clip_norm_final": self.clip_norm,
        }
        if cfg.mode == "central":
            mech["name"] = "DP-FedAvg: clipped updates, Gaussian noise z*C on the sum, / (q N)"
            if self.adaptive is not None:
                mech["adaptive_clipping"] = {
                    "target_quantile": self.adaptive.target_quantile,
                    "learning_rate": self.adaptive.learning_rate,
                    "count_stddev": self.adaptive.count_stddev,
                    "update_noise_multiplier": self.update_noise_multiplier,
                }
        else:
            assert self.mechanism is not None
            mech["name"] = "distributed discrete Gaussian (Kairouz et al. 2021)"
            mech.update(
                bits=self.mechanism.bits,
                scale=self.mechanism.scale,
                min_sites=self.mechanism.min_sites,
                expected_failed_round_rate=self.failed_round_rate,
                note="each round accounted with the sites whose noise reached the sum; "
                "no credit taken for sampling",
            )
        out["mechanism"] = mech
        eps = self.accountant.epsilon(cfg.delta)
        out["epsilon"] = {"rdp": eps["rdp"], "pld": eps["pld"], "best": eps["best"]}
        if self.mechanism is not None:
            out["guarantees"] = {
                "against_readers_of_the_model": {
                    "epsilon": out["epsilon"],
                    "delta": cfg.delta,
                    "unit": "site",
                },
                "against_the_server": self.server_view_report(),
            }
        out["events"] = self.accountant.to_dict()["events"]
        # Site-level DP: the bound holds for every eligible site, sampled or not. Which
        # sites took part stays out of this report (site_reports() gives each its own).
        return out

    def _local_site_figures(self) -> dict[str, dict[str, Any]]:
        """Each local-DP site's epsilon and events, computed once per completed round (the
        report and the site reports both need them, and PLD takes a while per site)."""
        if self._site_figures[0] != len(self.per_round):
            figures = {
                site: {
                    "epsilon": acc.epsilon(self.cfg.delta),
                    "events": acc.to_dict()["events"],
                }
                for site, acc in sorted(self.site_accountants.items())
            }
            self._site_figures = (len(self.per_round), figures)
        return self._site_figures[1]

    def site_reports(self) -> dict[str, dict[str, Any]]:
        """Per site, its own participation and privacy figures, and nobody else's."""
        head = {"mode": self.cfg.mode, "delta": self.cfg.delta}
        if self.cfg.mode == "local":
            return {
                site: {
                    "site": site,
                    **head,
                    "unit": "example",
                    "seeded_noise": site in self.seeded_sites,
                    **figures,
                }
                for site, figures in self._local_site_figures().items()
            }
        eps = self.accountant.epsilon(self.cfg.delta)["best"]
        return {
            site: {
                "site": site,
                **head,
                "unit": "site",
                "rounds_participated": n,
                "seeded_noise": site in self.seeded_sites,
                "epsilon": eps,  # the job's bound: it holds for every eligible site
            }
            for site, n in sorted(self.participation.items())
        }
