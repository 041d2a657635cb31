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
from consortia.privacy.accountant import PrivacyAccountant
from consortia.privacy.analytics import (
    NoiseSpec,
    dp_count,
    dp_histogram,
    dp_mean,
    dp_quantiles,
    query_events,
)
from consortia.privacy.budget import BudgetGuard
from consortia.privacy.mechanisms.analytics import RecordBudget
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
    budget = RecordBudget.restore(folder)
    queries, report = budget.queries, budget.training_report
    own_file = folder / "analytics.json"
    guard = BudgetGuard(limit, delta, "best", "analytics") if limit is not None else None

    ids, sites, _ = build_sites(cfg, load_dataset(cfg.task, base))
    results: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    for q in an.queries:
        site_values = [_site_column(sites[s], q.column) for s in ids]
        if guard is not None:
            decision = budget.check(guard, query_events(q.kind, _noise(q), q.name))
            if not decision.allowed:
                why = (
                    f"refused: the record-level epsilon would reach "
                    f"{decision.projected_epsilon:.4g} at delta {delta:g}, over the limit of "
                    f"{guard.limit:g} (spent: {decision.spent_epsilon:.4g})"
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
    record_budget = budget.report_section(delta, limit)
    site_budget = budget.site_section()
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


def finite(x: float | None) -> str:
    return "inf" if x is None or math.isinf(x) else f"{x:.4g}"
