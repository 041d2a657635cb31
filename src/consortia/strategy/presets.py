"""Strategy = selection + aggregator + server optimiser + client-side settings.

FedAvg, FedProx, FedAvgM, FedAdam, FedYogi and FedAdagrad differ only in which server
optimiser and which client setting they use, so a preset is a registry row, not a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings
from consortia.core.registry import AGGREGATORS, PRESETS
from consortia.strategy.aggregators import Aggregator
from consortia.strategy.selection import Selection
from consortia.strategy.server_opt import ServerOptimizer, make_server_optimizer
from consortia.strategy.validation import UpdateRules


@dataclass(frozen=True)
class Strategy:
    selection: Selection
    aggregator: Aggregator
    server_optimizer: ServerOptimizer
    train: TrainSettings = field(default_factory=TrainSettings)
    validation: UpdateRules = field(default_factory=UpdateRules)


@dataclass(frozen=True)
class Preset:
    """A named combination: the server optimiser, its default lr, the default FedProx mu."""

    server_optimizer: str
    server_lr: float
    proximal_mu: float = 0.0


for _name, _preset in {
    "fedavg": Preset("sgd", 1.0),
    "fedprox": Preset("sgd", 1.0, proximal_mu=0.01),
    "fedavgm": Preset("momentum", 1.0),
    "fedadam": Preset("adam", 0.01),
    "fedyogi": Preset("yogi", 0.01),
    "fedadagrad": Preset("adagrad", 0.01),
}.items():
    PRESETS.register(_name, _preset)


def make_strategy(
    preset: str = "fedavg",
    *,
    selection: Selection,
    train: TrainSettings | None = None,
    aggregator: str | Aggregator = "weighted_mean",
    server_optimizer: str | None = None,
    server_options: dict[str, Any] | None = None,
    validation: UpdateRules | None = None,
) -> Strategy:
    """Build a preset, letting any part be overridden (by registered name, or an aggregator
    object)."""
    p: Preset = PRESETS.get(preset)  # type: ignore[assignment]
    agg: Aggregator = AGGREGATORS.get(aggregator) if isinstance(aggregator, str) else aggregator  # type: ignore[assignment]
    options = dict(server_options or {})
    if options.get("lr") is None:
        options["lr"] = p.server_lr if server_optimizer in (None, p.server_optimizer) else None
    try:
        opt = make_server_optimizer(server_optimizer or p.server_optimizer, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy.server_optimizer: {exc}") from exc
    settings = train or TrainSettings()
    if p.proximal_mu and settings.proximal_mu == 0.0:
        settings = replace(settings, proximal_mu=p.proximal_mu)
    return Strategy(selection, agg, opt, settings, validation or UpdateRules())
