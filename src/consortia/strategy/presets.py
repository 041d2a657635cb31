"""Strategy = selection + aggregator + server optimiser + client-side settings.

FedAvg, FedProx, FedAvgM, FedAdam, FedYogi and FedAdagrad differ only in which server
optimiser and which client setting they use, so a preset is a table row, not a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings
from consortia.strategy.aggregators import AGGREGATORS, Aggregator
from consortia.strategy.selection import Selection
from consortia.strategy.server_opt import ServerOptimizer, make_server_optimizer


@dataclass(frozen=True)
class Strategy:
    selection: Selection
    aggregator: Aggregator
    server_optimizer: ServerOptimizer
    train: TrainSettings = field(default_factory=TrainSettings)


# preset -> (server optimiser name, default server lr, default proximal mu)
PRESETS: dict[str, tuple[str, float | None, float]] = {
    "fedavg": ("sgd", 1.0, 0.0),
    "fedprox": ("sgd", 1.0, 0.01),
    "fedavgm": ("momentum", 1.0, 0.0),
    "fedadam": ("adam", 0.01, 0.0),
    "fedyogi": ("yogi", 0.01, 0.0),
    "fedadagrad": ("adagrad", 0.01, 0.0),
}


def make_strategy(
    preset: str = "fedavg",
    *,
    selection: Selection,
    train: TrainSettings | None = None,
    aggregator: str = "weighted_mean",
    server_optimizer: str | None = None,
    server_options: dict[str, Any] | None = None,
) -> Strategy:
    """Build a preset, letting any part be overridden by name."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown strategy preset {preset!r}; choose from {sorted(PRESETS)}")
    if aggregator not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {aggregator!r}; choose from {sorted(AGGREGATORS)}")
    opt_name, default_lr, default_mu = PRESETS[preset]
    options = dict(server_options or {})
    options.setdefault("lr", default_lr)
    try:
        opt = make_server_optimizer(server_optimizer or opt_name, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy.server_optimizer: {exc}") from exc
    settings = train or TrainSettings()
    if preset == "fedprox" and settings.proximal_mu == 0.0:
        settings = replace(settings, proximal_mu=default_mu)
    return Strategy(selection, AGGREGATORS[aggregator], opt, settings)
