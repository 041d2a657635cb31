"""The job file: one TOML document, validated by pydantic, shared by simulation and deployment.

``[task]``, ``[train]``, ``[strategy]`` and ``[evaluation]`` describe the learning job and
mean the same wherever it runs; ``[simulation]`` (virtual sites and how data is split
among them) is read only by ``consortia simulate``. Unknown keys are errors, because a
misspelt privacy or strategy setting silently ignored is worse than a refused file.
"""

from __future__ import annotations

import difflib
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from consortia.core.errors import ConfigError
from consortia.core.policy_config import SitePolicyConfig
from consortia.core.privacy_modes import MODES, ModeFacts
from consortia.core.registry import (
    AGGREGATORS,
    FLEETS,
    FRAMEWORKS,
    PRESETS,
    SERVER_OPTIMIZERS,
    Registry,
)
from consortia.core.robustness_config import AttackConfig, AuditConfig, ValidationConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _registered(registry: Registry[object]) -> AfterValidator:
    """A job-file name checked against the registry the part registered itself in."""
    return AfterValidator(registry.check)


AggregatorName = Annotated[str, _registered(AGGREGATORS)]
PresetName = Annotated[str, _registered(PRESETS)]
OptimizerName = Annotated[str, _registered(SERVER_OPTIMIZERS)]
FleetName = Annotated[str, _registered(FLEETS)]
FrameworkName = Annotated[str, _registered(FRAMEWORKS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    framework: FrameworkName
    app: str = Field(
        description="Python file (relative to the job file) or module with the task's functions"
    )
    model: str = "make_model"
    data: str = "load_data"
    loss: str = "cross_entropy"
    fit: str = "fit"
    evaluate: str = "evaluate"
    site: str | None = Field(
        None,
        description="function (site_id) -> SiteApp that simulation uses for each site "
        "instead of the built-in Site; a deployment's client names it with --app",
    )
    workflow: str | None = Field(
        None,
        description="function (list of round steps) -> list of round steps: adds or "
        "replaces steps, in simulation and deployment alike",
    )


class TrainConfig(_Strict):
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    proximal_mu: float = Field(0.0, ge=0)


class ServerOptimizerConfig(_Strict):
    name: OptimizerName | None = None
    lr: float | None = Field(None, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class AdaptiveClippingConfig(_Strict):
    """Andrew et al. 2021: move the clip norm toward a quantile of the update norms."""

    target_quantile: float = Field(0.5, gt=0, lt=1)
    learning_rate: float = Field(0.2, gt=0)
    count_stddev: float | None = Field(None, gt=0, description="default: expected sites / 20")


class PrivacyConfig(_Strict):
    """Differential privacy for the job.

    central: sites clip, the server adds Gaussian noise to the sum (DP-FedAvg).
    distributed: sites clip, round and add their share of discrete Gaussian noise.
    local: each site trains with DP-SGD (example-level DP).
    Under central and distributed DP, sites are chosen by Poisson sampling at
    ``sample_rate``: the sampling the accountant assumes is the sampling that happens.
    """

    mode: Literal["central", "distributed", "local"]
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "pld"] = "rdp"
    sample_rate: float | None = Field(None, gt=0, le=1)
    clip_norm: float | None = Field(None, gt=0)
    noise_multiplier: float | None = Field(None, ge=0)
    target_epsilon: float | None = Field(None, gt=0)
    epsilon_limit: float | None = Field(None, gt=0)
    adaptive_clipping: AdaptiveClippingConfig | None = None
    bits: int = Field(32, ge=8, le=62)
    min_sites: int | None = Field(None, ge=1)
    local_noise_multiplier: float | None = Field(None, gt=0)
    local_max_grad_norm: float = Field(1.0, gt=0)
    seeded_noise: bool = False
    allow_without_secure_aggregation: bool = Field(
        False,
        description="distributed DP in a deployment: accept that the server sees each "
        "site's encoded update (guarantee against the server: multiplier z/sqrt(min_sites))",
    )
    population: int | None = Field(
        None, ge=1, description="eligible sites N (deployment; simulation uses simulation.sites)"
    )

    @model_validator(mode="after")
    def _complete(self) -> PrivacyConfig:
        facts = MODES[self.mode]
        for name in facts.requires:
            if getattr(self, name) is None:
                raise ValueError(f"{self.mode} DP needs {name}")
        if not facts.calibrated:
            return self
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give noise_multiplier or target_epsilon (to calibrate it), not both")
        if not facts.adaptive_clipping and self.adaptive_clipping is not None:
            allowed = " or ".join(m.name for m in MODES.values() if m.adaptive_clipping)
            raise ValueError(f"adaptive clipping is for {allowed} DP only")
        if not facts.pld_accountant and self.accountant == "pld":
            raise ValueError(
                f"accountant: {self.mode} DP rounds are {facts.events} events, which the PLD "
                "accountant cannot express; use accountant = 'rdp'"
            )
        return self


class SecureAggregationConfig(_Strict):
    """SecAgg+ (Bell et al. 2020): the server learns only the sum of the round's inputs.

    k and t default to the smallest neighbour count whose failure bound stays under
    2^-failure_bits for each round's number of sites, ``dropout_rate`` and
    ``corrupt_fraction`` (upper bounds, not averages: docs/secure_aggregation.md).
    """

    neighbours: int | None = Field(None, ge=2, description="k (default: derived per round)")
    threshold: int | None = Field(None, ge=2, description="t, with neighbours (default: derived)")
    dropout_rate: float = Field(0.1, ge=0, lt=1)
    corrupt_fraction: float = Field(0.0, ge=0, lt=1)
    failure_bits: float = Field(40.0, gt=0, le=128)
    bits: int | None = Field(
        None, ge=8, le=62, description="ring for float updates (default 32); DP: privacy.bits"
    )
    clip_range: float = Field(1.0, gt=0, description="each weighted coordinate, clipped to +-")
    weight_cap: int = Field(
        1000, ge=1, description="examples at which a site's weight stops growing"
    )

    @model_validator(mode="after")
    def _graph(self) -> SecureAggregationConfig:
        if self.threshold is not None and self.neighbours is None:
            raise ValueError("secure_aggregation.threshold needs secure_aggregation.neighbours")
        k, t = self.neighbours, self.threshold
        if k is not None and t is not None and not (k + 1) / 2 < t <= k:
            raise ValueError(
                f"secure_aggregation.threshold: {t} must be above (neighbours + 1) / 2 and at "
                f"most neighbours = {k} (below, the shares honest sites give could rebuild "
                "both of one site's secrets)"
            )
        return self


class AnalyticsQuery(_Strict):
    """One differentially private statistic over all sites' records."""

    name: str
    kind: Literal["count", "histogram", "mean", "quantiles"]
    column: int | Literal["label"] = "label"
    bounds: tuple[float, float] | None = None
    bins: int = Field(16, ge=1)
    edges: list[float] | None = None
    quantiles: list[float] | None = None
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon: float | None = Field(None, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> AnalyticsQuery:
        if self.mechanism == "laplace" and self.epsilon is None:
            raise ValueError("the laplace mechanism needs epsilon")
        if self.mechanism == "gaussian" and self.noise_multiplier is None:
            raise ValueError("the gaussian mechanism needs noise_multiplier")
        if self.kind in ("mean", "quantiles") and self.bounds is None:
            raise ValueError(f"a {self.kind} query needs bounds = [low, high]")
        if self.kind == "histogram" and self.edges is None and self.bounds is None:
            raise ValueError("a histogram query needs edges or bounds (with bins)")
        if self.kind == "quantiles" and not self.quantiles:
            raise ValueError("a quantiles query needs quantiles = [...]")
        if self.quantiles and not all(0 <= q <= 1 for q in self.quantiles):
            raise ValueError("quantiles must lie in [0, 1]")
        return self


class AnalyticsConfig(_Strict):
    delta: float | None = Field(None, gt=0, lt=1)
    epsilon_limit: float | None = Field(None, gt=0)
    queries: list[AnalyticsQuery] = Field(min_length=1)


class StrategyConfig(_Strict):
    preset: PresetName = "fedavg"
    sites_per_round: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    min_sites: int = Field(1, ge=1)
    min_replies: int | None = Field(None, ge=1)
    deadline_s: float = Field(600.0, gt=0)
    grace_s: float = Field(
        3.0,
        ge=0,
        description="once min_replies are in, wait this long for the rest, then end the phase",
    )
    aggregator: AggregatorName = "weighted_mean"
    aggregator_options: dict[str, int | float | bool | str | list[str]] = Field(
        default_factory=dict,
        description="the aggregator's own settings (e.g. f for krum), checked by the "
        "aggregator's options model",
    )
    tolerate_failing_sites: bool = Field(
        False,
        description="a run where some site failed every round it was asked still ends "
        "'completed' (by default it ends 'degraded', and the command exits with 3)",
    )
    server_optimizer: ServerOptimizerConfig = ServerOptimizerConfig()
    validation: ValidationConfig = ValidationConfig()

    @model_validator(mode="after")
    def _one_size(self) -> StrategyConfig:
        if self.sites_per_round is not None and self.fraction is not None:
            raise ValueError("give sites_per_round or fraction, not both")
        return self


class EvaluationConfig(_Strict):
    central_every: int = Field(1, ge=0)
    federated_every: int = Field(0, ge=0)
    federated_sites: int | None = Field(None, ge=1)
    federated_fraction: float | None = Field(None, gt=0, le=1)
    deadline_s: float = Field(600.0, gt=0)


class PartitionConfig(_Strict):
    method: Literal["iid", "dirichlet", "quantity", "shards"] = "iid"
    seed: int = 0
    alpha: float | None = Field(None, gt=0)
    distribution: Literal["lognormal", "powerlaw"] | None = None
    sigma: float | None = Field(None, gt=0)
    exponent: float | None = Field(None, gt=0)
    min_size: int | None = Field(None, ge=0)
    classes_per_site: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _needs(self) -> PartitionConfig:
        if self.method == "dirichlet" and self.alpha is None:
            raise ValueError("the dirichlet method needs alpha")
        if self.method == "shards" and self.classes_per_site is None:
            raise ValueError("the shards method needs classes_per_site")
        return self

    def params(self) -> dict[str, Any]:
        """The method's own parameters, for ``consortia.data.make_partition``."""
        keys = {
            "iid": (),
            "dirichlet": ("alpha",),
            "quantity": ("distribution", "sigma", "exponent", "min_size"),
            "shards": ("classes_per_site",),
        }[self.method]
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class SimulationConfig(_Strict):
    sites: int = Field(ge=1)
    workers: int = Field(2, ge=1)
    fleet: FleetName = "pool"
    local_eval_fraction: float = Field(0.0, ge=0, lt=1)
    partition: PartitionConfig = PartitionConfig()
    site_policy: SitePolicyConfig | None = None
    site_policies: dict[str, SitePolicyConfig] = Field(
        default_factory=dict,
        description="per-site policies (by site id) that replace site_policy for those sites",
    )
    attack: AttackConfig | None = None


class JobConfig(_Strict):
    name: str = "job"
    rounds: int = Field(ge=1)
    seed: int = 0
    task: TaskConfig
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig
    evaluation: EvaluationConfig = EvaluationConfig()
    privacy: PrivacyConfig | None = None
    analytics: AnalyticsConfig | None = None
    audit: AuditConfig | None = None
    secure_aggregation: SecureAggregationConfig | None = None
    simulation: SimulationConfig | None = None

    @property
    def poisson_sampling(self) -> bool:
        return self.privacy is not None and MODES[self.privacy.mode].poisson_sampled

    @model_validator(mode="after")
    def _selection_is_defined(self) -> JobConfig:
        sized = self.strategy.sites_per_round is not None or self.strategy.fraction is not None
        if self.poisson_sampling and sized:
            raise ValueError(
                "strategy.sites_per_round / fraction: under "
                + " or ".join(m.name for m in MODES.values() if m.poisson_sampled)
                + " DP sites are Poisson-sampled at privacy.sample_rate; remove them"
            )
        if not self.poisson_sampling and not sized:
            raise ValueError("strategy: give sites_per_round or fraction")
        return self

    @property
    def privacy_facts(self) -> ModeFacts | None:
        """What the job's privacy mode means for the checks below (None: no privacy)."""
        return MODES[self.privacy.mode] if self.privacy is not None else None

    @model_validator(mode="after")
    def _aggregator_fits_privacy(self) -> JobConfig:
        aggregator = aggregator_from_config(self.strategy)
        needs = getattr(aggregator, "needs", "sum")
        facts = self.privacy_facts
        if needs != "all" or facts is None or not facts.sum_only:
            return self
        # Only a trusted server that noises the sum itself can bound what an aggregator
        # reading each update moves the output by; encoded updates it cannot read at all.
        bounded = facts.server_noise and getattr(aggregator, "bounded_sensitivity", False)
        if bounded:
            return self
        raise ValueError(
            f"strategy.aggregator: {self.strategy.aggregator!r} needs every update, but "
            f"privacy.mode = {facts.name!r} works on the sum of updates only ("
            + (
                "the server never sees one update"
                if facts.encoded_updates
                else "the noise is calibrated to a sum of clipped updates, and this "
                "aggregator's output can move further when one site changes"
            )
            + "); choose a sum-only aggregator such as 'weighted_mean' or 'mean'"
            + (", or 'norm_bounded_mean'" if facts.server_noise else "")
            + ", or local DP; the defence that composes with it is the norm bound the "
            "sites apply themselves (privacy.clip_norm)"
        )

    @model_validator(mode="after")
    def _validation_fits_privacy(self) -> JobConfig:
        v, facts = self.strategy.validation, self.privacy_facts
        if facts is not None and facts.encoded_updates:
            for name in ("max_norm", "max_norm_multiple"):
                if getattr(v, name) is not None:
                    raise ValueError(
                        f"strategy.validation.{name}: under {facts.name} DP the server sees "
                        "encoded, noised updates whose norms mean nothing; the sites' own "
                        "clipping (privacy.clip_norm) is the norm bound that applies"
                    )
        if facts is not None and facts.server_noise and v.max_norm_multiple is not None:
            raise ValueError(
                f"strategy.validation.max_norm_multiple: under {facts.name} DP which updates "
                "count must not depend on the other sites' updates (one site could then "
                "change the sum by more than the clip norm); use max_norm"
            )
        return self

    @model_validator(mode="after")
    def _audit_fits_privacy(self) -> JobConfig:
        facts = self.privacy_facts
        if self.audit is not None and facts is not None and facts.sum_only:
            raise ValueError(
                f"audit: per-site scores would publish, site by site, what privacy.mode = "
                f"{facts.name!r} hides"
                + (" (and the server sees only the sum)" if facts.encoded_updates else "")
                + "; remove [audit] or use local DP"
            )
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> JobConfig:
        sa = self.secure_aggregation
        if sa is None:
            return self
        only_sum = "secure aggregation shows the server only the sum of the round's inputs"
        aggregator = aggregator_from_config(self.strategy)
        if getattr(aggregator, "needs", "sum") == "all":
            raise ValueError(
                f"strategy.aggregator: {self.strategy.aggregator!r} needs every update, but "
                f"{only_sum}; choose a sum-only aggregator such as 'weighted_mean' or 'mean'"
            )
        facts = self.privacy_facts
        if facts is not None and not facts.encoded_updates:
            raise ValueError(
                f"privacy.mode: {facts.name!r} with secure aggregation is not supported: "
                + (
                    "central DP's server re-clips each update and adds the noise itself, and "
                    f"{only_sum}; use mode = 'distributed', made for it"
                    if facts.server_noise
                    else "each site's DP-SGD is accounted from its own example count, which "
                    "secure aggregation does not send; use mode = 'distributed'"
                )
            )
        if facts is not None and sa.bits is not None:
            raise ValueError(
                "secure_aggregation.bits: under distributed DP the ring is privacy.bits"
            )
        v = self.strategy.validation
        for name in ("max_norm", "max_norm_multiple", "max_examples", "max_examples_per_site"):
            if getattr(v, name) is not None:
                raise ValueError(
                    f"strategy.validation.{name}: {only_sum}, so no single update or count "
                    "can be checked; secure_aggregation.clip_range and weight_cap bound what "
                    "one site adds"
                )
        if self.audit is not None:
            raise ValueError(f"audit: per-site scores need each update, and {only_sum}")
        attack = self.simulation.attack if self.simulation is not None else None
        data_only = (
            attack is None
            or attack.kind == "label_flip"
            or (attack.kind == "backdoor" and attack.boost == 1)
        )
        if not data_only:
            assert attack is not None
            raise ValueError(
                f"simulation.attack: the {attack.kind!r} attack rewrites the update the server "
                "receives, which secure aggregation replaces by a masked input; data "
                "poisoning (label_flip, or backdoor with boost = 1) runs with it"
            )
        return self

    @model_validator(mode="after")
    def _federated_eval_needs_data(self) -> JobConfig:
        ev = self.evaluation
        if ev.federated_every > 0:
            if ev.federated_sites is None and ev.federated_fraction is None:
                raise ValueError(
                    "evaluation.federated_every needs federated_sites or federated_fraction"
                )
            if self.simulation is not None and self.simulation.local_eval_fraction == 0:
                raise ValueError(
                    "federated evaluation in simulation needs simulation.local_eval_fraction > 0 "
                    "(each site's held-out share)"
                )
        return self


def aggregator_from_config(strategy: StrategyConfig) -> Any:
    """The job's aggregator, configured by ``strategy.aggregator_options`` (ValueError
    naming each bad option, for the job file's validators)."""
    aggregator = AGGREGATORS.get(strategy.aggregator)
    options = strategy.aggregator_options
    if not options:
        return aggregator
    configure = getattr(aggregator, "with_options", None)
    if configure is None:
        raise ValueError(
            f"strategy.aggregator_options: aggregator {strategy.aggregator!r} takes no options"
        )
    try:
        return configure(options)
    except ValidationError as exc:
        current = getattr(aggregator, "options", None)
        model = type(current) if isinstance(current, BaseModel) else BaseModel
        raise ValueError(_describe(exc, model, "strategy.aggregator_options.")) from None


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at ``loc`` (a key path into ``model``) accepts."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            if isinstance(part, int):  # an item of a list of sections
                continue
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        for tp in candidates:
            tp = next((a for a in typing.get_args(tp) if isinstance(a, type)), tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                current = tp
                break
        else:
            return []
    return list(current.model_fields)


def _describe(exc: ValidationError, model: type[BaseModel] = BaseModel, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        path = prefix + ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a setting consortia knows)"
            *section, key = err["loc"]
            close = difflib.get_close_matches(str(key), _known_keys(model, tuple(section)), n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        elif err["type"] == "missing":
            msg = "required setting is missing"
        lines.append(f"{path}: {msg}")
    return "; ".join(lines)


_M = TypeVar("_M", bound=BaseModel)


def parse_model(model: type[_M], path: str | Path) -> _M:
    """Load a small TOML settings file (e.g. a site policy) with the job file's checks."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
        return model.model_validate(data)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, model)}") from None


def parse_job(data: dict[str, Any], origin: str = "job") -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc, JobConfig)}") from None


def read_job(path: str | Path) -> dict[str, Any]:
    """The job file's TOML, not yet validated."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_job(path: str | Path) -> JobConfig:
    """Read and validate a job file (``consortia.task.load_job_with_app`` first imports
    the task's app, so that names the app registers are valid in the file)."""
    return parse_job(read_job(path), str(path))
