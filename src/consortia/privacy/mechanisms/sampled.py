"""What central and distributed DP share: Poisson-sampled sites, a site-level unit, one
job accountant whose events every eligible site's bound is read from."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

from consortia.core.config import PrivacyConfig
from consortia.core.messages import ClientPrivacy, FitRes, TrainSettings
from consortia.privacy.mechanisms.base import Ledger, Mechanism


class SampledSites(Mechanism):
    """Base of the site-level modes: sites sampled at ``sample_rate``, updates clipped."""

    level: ClassVar[str] = "site (one site's whole contribution)"

    def __init__(
        self, cfg: PrivacyConfig, *, eligible_sites: int, dimension: int, rounds: int
    ) -> None:
        super().__init__(cfg, eligible_sites=eligible_sites, dimension=dimension, rounds=rounds)
        assert cfg.sample_rate is not None and cfg.clip_norm is not None
        self.sample_rate = cfg.sample_rate
        self.expected_sites = cfg.sample_rate * eligible_sites
        self.clip_norm = self.initial_clip_norm = cfg.clip_norm

    # -- the site's side -------------------------------------------------------------------
    @classmethod
    def applies(cls, p: ClientPrivacy | None, settings: TrainSettings) -> bool:
        return p is not None and p.mode == cls.name

    @classmethod
    def privatize(
        cls,
        reply: FitRes,
        p: ClientPrivacy | None,
        site_id: str,
        round_: int,
        noise_seed: int | None,
    ) -> FitRes:
        """The privatized update; under central and distributed DP the weights are uniform,
        so the exact example count and the training metrics (side channels outside the
        guarantee) are dropped."""
        assert p is not None
        delta, clip_bit, seeded = cls.transform(reply.delta, p, site_id, round_, noise_seed)
        return FitRes(reply.site, reply.round, delta, 0, {}, clip_bit, reply.seeded_noise or seeded)

    @classmethod
    @abstractmethod
    def transform(
        cls,
        update: Any,
        p: ClientPrivacy,
        site_id: str,
        round_: int,
        noise_seed: int | None,
    ) -> tuple[Any, float | None, bool]:
        """(what to send, adaptive-clipping bit or None, whether noise came from a seed)."""

    # -- the server's side -----------------------------------------------------------------
    def client_privacy(self) -> ClientPrivacy | None:
        return ClientPrivacy(
            mode=self.name,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            delta=self.cfg.delta,
            **self._client_extras(),
        )

    def _client_extras(self) -> dict[str, Any]:
        return {}

    def end_round(self, ledger: Ledger, agg: Any, settings: TrainSettings) -> dict[str, float]:
        for site, _ in agg.contributors:
            ledger.participation[site] = ledger.participation.get(site, 0) + 1
        return {"epsilon": ledger.epsilon() or math.inf}

    def restore(self, ledger: Ledger, history: list[dict[str, Any]]) -> None:
        for row in history:
            ledger.accountant.extend(self.round_events(int(row["replies"])))
            self._restore_row(row)
            ledger.per_round.append(
                {"round": row["round"], **{k: row[k] for k in ("epsilon", "clip_norm") if k in row}}
            )

    def _restore_row(self, row: dict[str, Any]) -> None:
        """What a mode keeps of a completed round's metrics row (adaptive: its clip norm)."""

    # -- the report ------------------------------------------------------------------------
    def report_section(self, ledger: Ledger) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
            "level": self.level,
            "neighbouring": self.neighbouring,
            "sampling": {
                "kind": "poisson",
                "rate": self.sample_rate,
                "eligible_sites": self.eligible_sites,
                "expected_sites": self.expected_sites,
            },
            "mechanism": {
                "noise_multiplier": self.noise_multiplier,
                "calibrated_for_epsilon": cfg.target_epsilon,
                "clip_norm_initial": self.initial_clip_norm,
                "clip_norm_final": self.clip_norm,
                **self._mechanism_fields(),
            },
        }
        eps = ledger.accountant.epsilon(cfg.delta)
        out["epsilon"] = {"rdp": eps["rdp"], "pld": eps["pld"], "best": eps["best"]}
        out.update(self._guarantees(ledger, out["epsilon"]))
        out["events"] = ledger.accountant.to_dict()["events"]
        # Site-level DP: the bound holds for every eligible site, sampled or not. Which
        # sites took part stays out of this report (site_reports() gives each its own).
        return out

    def _mechanism_fields(self) -> dict[str, Any]:
        return {}

    def _guarantees(self, ledger: Ledger, epsilon: dict[str, Any]) -> dict[str, Any]:
        return {}

    def site_reports(self, ledger: Ledger) -> dict[str, dict[str, Any]]:
        eps = ledger.accountant.epsilon(self.cfg.delta)["best"]
        return {
            site: {
                "site": site,
                "mode": self.name,
                "delta": self.cfg.delta,
                "unit": self.unit,
                "rounds_participated": n,
                "seeded_noise": site in ledger.seeded_sites,
                "epsilon": eps,  # the job's bound: it holds for every eligible site
            }
            for site, n in sorted(ledger.participation.items())
        }
