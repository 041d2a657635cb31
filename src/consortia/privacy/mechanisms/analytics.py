"""Federated analytics as a mechanism: record-level unit, its budget, what it restores.

The unit is one record (``neighbouring.RECORD``). Budgets are kept by unit and never mixed:
after a local-DP run (whose unit, one example, is a record) queries add to what DP-SGD
spent on the worst site's examples; after a site-level run (central or distributed) the
training's site-level figure is left as it was, and the queries have a record-level budget
of their own. ``restore`` reads both from the run folder, the mechanism of the training
run named by its report's ``mode`` (``MECHANISMS``), never by comparing strings here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from consortia.core.errors import ConfigError
from consortia.privacy import neighbouring
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.budget import BudgetDecision, BudgetGuard
from consortia.privacy.mechanisms.base import Mechanism


def _training_mechanism(report: dict[str, Any]) -> type[Mechanism] | None:
    from consortia.privacy.mechanisms import MECHANISMS

    return MECHANISMS.get(str(report.get("mode")))


@dataclass
class RecordBudget:
    """What one record has spent: the queries, plus, after a local-DP run, what DP-SGD
    spent on its site's examples.

    A record held by site s has lost what s's training spent and every query since. The
    worst site is what the guarantee must cover, so epsilon is the maximum over the sites'
    training accountants of (that site's training + the queries). Site-level events
    (central or distributed training) are never composed here: a count has sensitivity 1
    per record but none bounded per site, so neither unit's events belong in the other's.
    """

    unit: ClassVar[str] = "record"
    neighbouring: ClassVar[str] = neighbouring.RECORD

    queries: PrivacyAccountant
    training: dict[str, PrivacyAccountant] = field(default_factory=dict)
    training_report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def restore(cls, folder: Path) -> RecordBudget:
        """What was already spent: a training run's privacy.json (record-level training:
        each site's spend, from its own site report) and an earlier analytics.json."""
        report: dict[str, Any] = {}
        training: dict[str, PrivacyAccountant] = {}
        path = folder / "privacy.json"
        if path.exists():
            report = json.loads(path.read_text())
            mech = _training_mechanism(report)
            if mech is not None and mech.unit == "example":  # an example is a record
                for site_file in sorted((folder / "site_reports").glob("*.json")):
                    rec = json.loads(site_file.read_text())
                    site = str(rec.get("site", site_file.stem))
                    training[site] = PrivacyAccountant.from_dict(rec)
        queries = PrivacyAccountant()
        own_file = folder / "analytics.json"
        if own_file.exists():
            queries = PrivacyAccountant.from_dict(_record_events(json.loads(own_file.read_text())))
        return cls(queries, training, report)

    def epsilon(self, delta: float, extra: list[PrivacyEvent] | None = None) -> dict[str, Any]:
        """Epsilon per accountant (``best`` the smaller) for the worst record, and its site."""
        events = [*self.queries.events, *(extra or [])]
        if not self.training:
            return {**PrivacyAccountant(events).epsilon(delta), "worst_site": None}
        worst: dict[str, Any] = {"best": -math.inf}
        seen: dict[tuple[Any, ...], dict[str, float | None]] = {}
        for site, acc in sorted(self.training.items()):
            key = tuple((*e._key(), e.count) for e in acc.events)
            if key not in seen:  # sites with the same training cost are computed once
                seen[key] = PrivacyAccountant(acc.events).epsilon(delta, events)
            eps = seen[key]
            best = math.inf if eps["best"] is None else eps["best"]
            if best > worst["best"]:
                worst = {**eps, "best": best, "worst_site": site}
        return worst

    def best(self, delta: float, extra: list[PrivacyEvent] | None = None) -> float:
        value = self.epsilon(delta, extra)["best"]
        return math.inf if value is None else float(value)

    def check(self, guard: BudgetGuard, events: list[PrivacyEvent]) -> BudgetDecision:
        """The guard's decision on ``events`` for the worst record (``best`` epsilon)."""
        return guard.decide(self.best(guard.delta), self.best(guard.delta, events))

    def report_section(self, delta: float, limit: float | None) -> dict[str, Any]:
        """analytics.json's record-level budget (and the training report's analytics)."""
        eps = self.epsilon(delta)
        return {
            "unit": self.unit,
            "neighbouring": self.neighbouring,
            "epsilon": {k: eps[k] for k in ("rdp", "pld", "best")},
            "epsilon_limit": limit,
            "includes_training": (
                f"local DP-SGD of every site; worst: {eps['worst_site']}" if self.training else None
            ),
            "events": self.queries.to_dict()["events"],
        }

    def site_section(self) -> dict[str, Any]:
        """The site-level budget beside it: the training's, untouched by any query."""
        report = self.training_report
        mech = _training_mechanism(report)
        return {
            "unit": "site (one site's whole contribution)",
            "epsilon": report.get("epsilon") if mech is not None and mech.unit == "site" else None,
            "neighbouring": report.get("neighbouring"),
            "note": "analytics releases have no site-level bound (one site's records move a "
            "count without limit): the site-level figure covers the trained model only",
        }


def _record_events(saved: dict[str, Any]) -> dict[str, Any]:
    """The query events of an earlier analytics.json."""
    try:
        return {"events": saved["budgets"]["record"]["events"]}
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"analytics.json holds no record-level budget: {exc}") from exc
