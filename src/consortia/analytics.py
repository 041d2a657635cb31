"""Federated analytics under differential privacy: ``consortia analytics JOB``.

Each virtual site computes a bounded local contribution from its own records (counts,
clamped sums, histogram counts: ``consortia.privacy.analytics``); the contributions are
summed and noised once. The unit is one record. Budgets are kept by unit and never mixed:
after a local-DP run (whose unit, one example, is a record) queries add to what DP-SGD
spent on the worst site's examples; after a central or distributed run (unit: a site) the
training's site-level figure is left as it was, and the queries have a record-level budget
of their own. ``analytics.epsilon_limit`` refuses a query that would take the record-level
epsilon past it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from consortia.client.runtime import SiteData
from consortia.core.config import AnalyticsQuery, JobConfig
from consortia.core.errors import ConfigError
from consortia.core.rng import derive_seed
from consortia.privacy import neighbouring
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.analytics import (
    NoiseSpec,
    dp_count,
    dp_histogram,
    dp_mean,
    dp_quantiles,
    query_events,
)
from consortia.privacy.rng import SecureRng
from consortia.simulation import build_sites
from consortia.task import load_dataset, load_job_with_app


@dataclass
class AnalyticsResult:
    results: dict[str, dict[str, Any]]
    epsilon: dict[str, float | None]
    delta: float
    out: Path
    refused: list[str] = field(default_factory=list)


def _column(values: Any, labels: np.ndarray, column: int | str) -> np.ndarray:
    if column == "label":
        return np.asarray(labels, dtype=np.float64)
    x = np.asarray(values)
    if x.ndim != 2 or not 0 <= int(column) < x.shape[1]:
        raise ConfigError(f"analytics: column {column} does not exist in data of shape {x.shape}")
    return x[:, int(column)].astype(np.float64)


def _site_column(site: SiteData, column: int | str) -> np.ndarray:
    """All of a site's records: its training part and its held-out part."""
    parts = [_column(site.x_train, site.y_train, column)]
    if site.num_eval:
        parts.append(_column(site.x_eval, site.y_eval, column))
    return np.concatenate(parts)


def _noise(q: AnalyticsQuery) -> NoiseSpec:
    if q.mechanism == "laplace":
        assert q.epsilon is not None
        return NoiseSpec.laplace(q.epsilon)
    assert q.noise_multiplier is not None
    return NoiseSpec.gaussian(q.noise_multiplier)


def _edges(q: AnalyticsQuery) -> np.ndarray:
    if q.edges is not None:
        return np.asarray(q.edges, dtype=np.float64)
    assert q.bounds is not None
    return np.linspace(q.bounds[0], q.bounds[1], q.bins + 1)


def _answer(
    q: AnalyticsQuery, site_values: list[np.ndarray], rng: SecureRng, acc: PrivacyAccountant
) -> Any:
    noise = _noise(q)
    if q.kind == "count":
        return dp_count(site_values, noise=noise, rng=rng, accountant=acc)
    if q.kind == "histogram":
        edges = _edges(q)
        counts = dp_histogram(site_values, edges, noise=noise, rng=rng, accountant=acc)
        return {"edges": edges.tolist(), "counts": counts.tolist()}
    assert q.bounds is not None
    if q.kind == "mean":
        return dp_mean(site_values, q.bounds, noise=noise, rng=rng, accountant=acc)
    assert q.quantiles is not None
    values = dp_quantiles(
        site_values, q.quantiles, q.bounds, bins=q.bins, noise=noise, rng=rng, accountant=acc
    )
    return dict(zip([str(p) for p in q.quantiles], np.asarray(values).tolist(), strict=True))


@dataclass
class RecordBudget:
    """What one record has spent: the queries, plus, after a local-DP run, what DP-SGD
    spent on its site's examples.

    The privacy unit of analytics is one record, and after local DP-SGD an example is a
    record: a record held by site s has lost what s's training spent and every query since.
    The worst site is what the guarantee must cover, so epsilon is the maximum over the
    sites' training accountants of (that site's training + the queries). Site-level events
    (central or distributed training) are never composed here: a count has sensitivity 1
    per record but none bounded per site, so neither unit's events belong in the other's.
    """

    queries: PrivacyAccountant
    training: dict[str, PrivacyAccountant] = field(default_factory=dict)

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


def _read_training(folder: Path) -> tuple[dict[str, Any], dict[str, PrivacyAccountant]]:
    """A training run's privacy.json (or {}), and, after a local-DP run, each site's
    example-level accountant from its site report (record-level: analytics adds to them)."""
    path = folder / "privacy.json"
    if not path.exists():
        return {}, {}
    report = json.loads(path.read_text())
    training: dict[str, PrivacyAccountant] = {}
    if report.get("mode") == "local":  # each site's own report holds its DP-SGD events
        for site_file in sorted((folder / "site_reports").glob("*.json")):
            rec = json.loads(site_file.read_text())
            training[str(rec.get("site", site_file.stem))] = PrivacyAccountant.from_dict(rec)
    return report, training


def run_analytics(
    job: str | Path | JobConfig,
    *,
    out: str | Path,
    base_dir: str | Path | None = None,
) -> AnalyticsResult:
    """Answer the job's queries, each refused if it would take the record-level epsilon past
    ``analytics.epsilon_limit``; record the spend in the folder (and its privacy.json)."""
    if isinstance(job, (str, Path)):
        cfg, base = load_job_with_app(job), Path(job).parent
    else:
        cfg, base = job, Path(base_dir or ".")
    if cfg.analytics is None:
        raise ConfigError("analytics: this job has no [analytics] section (queries)")
    if cfg.simulation is None:
        raise ConfigError("analytics: the simulated sites come from [simulation]; it is missing")
    an = cfg.analytics
    delta = an.delta or (cfg.privacy.delta if cfg.privacy else 1e-5)
    # Record-level only: the job's privacy.epsilon_limit is a site-level limit on training,
    # which record-level events can neither spend from nor satisfy.
    limit = an.epsilon_limit
    seeded = cfg.privacy is not None and cfg.privacy.seeded_noise
    rng = SecureRng(derive_seed(cfg.seed, "analytics")) if seeded else SecureRng()

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # What was already spent: a training run's privacy.json (local DP: per-site example-level
    # spend) and an earlier analytics run's own record. Spending only ever accumulates.
    report, training = _read_training(folder)
    own_file = folder / "analytics.json"
    queries = PrivacyAccountant()
    if own_file.exists():
        queries = PrivacyAccountant.from_dict(_record_events(json.loads(own_file.read_text())))
    budget = RecordBudget(queries, training)

    ids, sites, _ = build_sites(cfg, load_dataset(cfg.task, base))
    results: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    for q in an.queries:
        site_values = [_site_column(sites[s], q.column) for s in ids]
        if limit is not None:
            spent = budget.epsilon(delta)["best"]
            projected = budget.epsilon(delta, query_events(q.kind, _noise(q), q.name))["best"]
            if projected > limit:
                why = (
                    f"refused: the record-level epsilon would reach {projected:.4g} at delta "
                    f"{delta:g}, over the limit of {limit:g} (spent: {spent:.4g})"
                )
                refused.append(f"{q.name}: {why}")
                results[q.name] = {"kind": q.kind, "refused": why}
                continue
        value = _answer(q, site_values, rng, queries)
        results[q.name] = {
            "kind": q.kind,
            "column": q.column,
            "mechanism": q.mechanism,
            "value": value,
            "epsilon_after": budget.epsilon(delta)["best"],
        }
    eps = budget.epsilon(delta)
    record_budget = {
        "unit": "record",
        "neighbouring": neighbouring.RECORD,
        "epsilon": {k: eps[k] for k in ("rdp", "pld", "best")},
        "epsilon_limit": limit,
        "includes_training": (
            f"local DP-SGD of every site; worst: {eps['worst_site']}" if training else None
        ),
        "events": queries.to_dict()["events"],
    }
    site_budget = {
        "unit": "site (one site's whole contribution)",
        "epsilon": report.get("epsilon")
        if report.get("mode") in ("central", "distributed")
        else None,
        "neighbouring": report.get("neighbouring"),
        "note": "analytics releases have no site-level bound (one site's records move a count "
        "without limit): the site-level figure covers the trained model only",
    }
    record = {
        "delta": delta,
        "budgets": {"record": record_budget, "site": site_budget},
        "results": results,
    }
    own_file.write_text(json.dumps(record, indent=1) + "\n")
    if report:  # the training's report states what analytics spent, in its own unit
        report["analytics"] = {
            **record_budget,
            "results_epsilon_after": {k: v.get("epsilon_after") for k, v in results.items()},
        }
        (folder / "privacy.json").write_text(json.dumps(report, indent=1) + "\n")
    return AnalyticsResult(results, record_budget["epsilon"], delta, folder, refused)


def _record_events(saved: dict[str, Any]) -> dict[str, Any]:
    """The query events of an earlier analytics.json."""
    try:
        return {"events": saved["budgets"]["record"]["events"]}
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"analytics.json holds no record-level budget: {exc}") from exc


def finite(x: float | None) -> str:
    return "inf" if x is None or math.isinf(x) else f"{x:.4g}"
