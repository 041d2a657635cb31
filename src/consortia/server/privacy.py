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
from consortia.privacy import neighbouring
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent, calibrate
from consortia.privacy.central import (
    AdaptiveClipping,
    clip_update,
    noisy_mean,
    split_noise_multiplier,
)
from consortia.privacy.distributed import DistributedDiscreteGaussian, choose_scale
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

    def result(self) -> tuple[np.ndarray, State]:
        n, need = len(self.contributors), self._mech.min_sites
        if n < need:
            raise RoundFailedError(
                f"distributed DP: {n} sites contributed, {need} needed; their noise shares "
                "would sum to too little noise, so this round's sum is not released"
            )
        self._inner.add("(sum)", self._mech.decode(self._sum).astype(np.float64), 1.0, {})
        total, state = self._inner.result()
        return (total / self._ctl.expected_sites).astype(self._dtype), state


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
        self.per_round: list[dict[str, Any]] = []
        self._site_figures: tuple[int, dict[str, dict[str, Any]]] = (-1, {})
        self.stopped: str | None = None
        self.eligible_sites = eligible_sites
        self.dimension = dimension
        self.mechanism: DistributedDiscreteGaussian | None = None
        self.adaptive: AdaptiveClipping | None = None
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
        else:
            assert cfg.target_epsilon is not None
            self.noise_multiplier = calibrate(
                cfg.target_epsilon, cfg.delta, cfg.sample_rate, rounds, accountant=cfg.accountant
            )
        self.clip_norm = self.initial_clip_norm = cfg.clip_norm
        self.update_noise_multiplier = self.noise_multiplier
        if cfg.adaptive_clipping is not None:
            ac = cfg.adaptive_clipping
            sigma_b = ac.count_stddev or self.expected_sites / 20
            self.adaptive = AdaptiveClipping(ac.target_quantile, ac.learning_rate, sigma_b)
            self.update_noise_multiplier = split_noise_multiplier(self.noise_multiplier, sigma_b)
        if cfg.mode == "distributed":
            min_sites = cfg.min_sites or max(1, math.floor(0.8 * self.expected_sites))
            scale = choose_scale(
                clip_norm=cfg.clip_norm,
                bits=cfg.bits,
                max_sites=eligible_sites,
                noise_multiplier=self.noise_multiplier,
                min_sites=min_sites,
                dimension=dimension,
            )
            self.mechanism = DistributedDiscreteGaussian(
                cfg.clip_norm, scale, cfg.bits, self.noise_multiplier, min_sites, dimension
            )

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
            dp_seeded_noise=self.seeded,
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
            noise_seed=self.seed if self.seeded else None,
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
        return FitSink(aggregator.begin(self.dimension, dtype, state))

    # -- after a round -------------------------------------------------------------------
    def end_round(self, rnd: int, agg: Any, settings: TrainSettings) -> dict[str, float]:
        """Record what the released model cost; adapt the clip norm; return round metrics."""
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
            self.accountant.extend(self.round_events(len(agg.contributors)))
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
    def noise_source(self) -> str:
        """Where this job's privacy noise comes from, as privacy.json states it."""
        if self.seeded:
            return "SEEDED from the job seed (reproducible; not private: debug/test only)"
        if self.cfg.mode == "local":
            return (
                "each site's ChaCha20 (SecureRng) keyed from its os.urandom: DP-SGD's Gaussian "
                "noise and its Poisson batch sampling (not torch's Mersenne Twister)"
            )
        return "ChaCha20 (SecureRng) keyed from os.urandom"

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
            "budget": {"epsilon_limit": cfg.epsilon_limit, "stopped": self.stopped},
            "outside_guarantee": self.outside_guarantee(),
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
                note="each round accounted with the sites whose noise reached the sum; "
                "no credit taken for sampling",
            )
        out["mechanism"] = mech
        eps = self.accountant.epsilon(cfg.delta)
        out["epsilon"] = {"rdp": eps["rdp"], "pld": eps["pld"], "best": eps["best"]}
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
                site: {"site": site, **head, "unit": "example", **figures}
                for site, figures in self._local_site_figures().items()
            }
        eps = self.accountant.epsilon(self.cfg.delta)["best"]
        return {
            site: {
                "site": site,
                **head,
                "unit": "site",
                "rounds_participated": n,
                "epsilon": eps,  # the job's bound: it holds for every eligible site
            }
            for site, n in sorted(self.participation.items())
        }
