"""A job file's sections turned into the parts a run is made of: selection, strategy,
round settings, the privacy controller. Shared by simulation and deployment, so the same
job file means the same thing wherever it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consortia.core.config import JobConfig, aggregator_from_config
from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings
from consortia.privacy.mechanisms import mechanism_class
from consortia.server.workflow import LoopSettings
from consortia.strategy.aggregators import Aggregator
from consortia.strategy.presets import Strategy, make_strategy
from consortia.strategy.selection import PoissonSelection, Selection, UniformSelection
from consortia.strategy.validation import UpdateRules

if TYPE_CHECKING:
    from consortia.server.privacy import PrivacyController


def selection_from_config(job: JobConfig, seeded: bool = False) -> Selection:
    """Under central or distributed DP, Poisson sampling (its coin flips seeded only when
    ``seeded``, i.e. in debug and test runs); otherwise the strategy's uniform sample."""
    if job.poisson_sampling:
        assert job.privacy is not None and job.privacy.sample_rate is not None
        return PoissonSelection(job.privacy.sample_rate, seeded=seeded)
    st = job.strategy
    return UniformSelection(fraction=st.fraction, count=st.sites_per_round, min_sites=st.min_sites)


def strategy_from_config(
    job: JobConfig, seeded: bool = False, aggregator: Aggregator | None = None
) -> Strategy:
    """The job's strategy: selection, aggregator, server optimiser and training settings."""
    st = job.strategy
    opt = st.server_optimizer
    options: dict[str, Any] = opt.model_dump(exclude={"name"})
    # TrainConfig (the job file) names its fields as TrainSettings (the message) does.
    settings = TrainSettings(**job.train.model_dump())
    return make_strategy(
        st.preset,
        selection=selection_from_config(job, seeded),
        train=settings,
        aggregator=aggregator or aggregator_from_config(st),
        server_optimizer=opt.name,
        server_options=options,
        validation=UpdateRules(
            **{
                **st.validation.model_dump(),
                "max_weight_multiple": st.validation.max_weight_multiple or None,  # 0: off
            }
        ),
    )


def loop_settings(job: JobConfig, n_sites: int) -> LoopSettings:
    st, ev = job.strategy, job.evaluation
    fed_sel = None
    if ev.federated_every > 0:
        fed_sel = UniformSelection(fraction=ev.federated_fraction, count=ev.federated_sites)
    min_replies = st.min_replies or st.min_sites
    expected = selection_from_config(job)
    if not job.poisson_sampling and min_replies > expected.how_many(n_sites):
        raise ConfigError(
            f"strategy.min_replies: {min_replies} replies can never arrive when "
            f"{expected.how_many(n_sites)} sites are asked per round"
        )
    return LoopSettings(
        rounds=job.rounds,
        seed=job.seed,
        fit_deadline_s=st.deadline_s,
        min_fit_replies=min_replies,
        central_every=ev.central_every,
        federated_every=ev.federated_every,
        federated_selection=fed_sel,
        evaluate_deadline_s=ev.deadline_s,
        grace_s=st.grace_s,
    )


def privacy_from_config(
    job: JobConfig, n_sites: int, dimension: int, seeded: bool, deployed: bool = False
) -> PrivacyController | None:
    """``deployed``: real sites over the network, where the server sees each site's encoded
    update unless secure aggregation hides it."""
    if job.privacy is None:
        return None
    secure = job.secure_aggregation is not None
    mechanism_class(job.privacy.mode).check_job(job.privacy, deployed=deployed and not secure)
    from consortia.server.privacy import PrivacyController

    return PrivacyController(
        job.privacy,
        eligible_sites=n_sites,
        dimension=dimension,
        rounds=job.rounds,
        seed=job.seed,
        seeded=seeded,
        secure_aggregation=secure,
    )
