"""Every update is checked before aggregation; refused ones are recorded with the reason and
the round goes on without them."""

from typing import Any

import numpy as np
import pytest

from consortia.client.runtime import Site, SiteData
from consortia.core.config import parse_job
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.messages import FitIns, FitRes, TrainSettings
from consortia.core.spec import ModelSpec
from consortia.fleet.debug import DebugFleet
from consortia.server.workflow import LoopSettings, Workflow, standard_steps
from consortia.strategy.presets import make_strategy
from consortia.strategy.selection import UniformSelection
from consortia.strategy.validation import UpdateRules, relative_refusals

SPEC = ModelSpec.from_arrays({"w": np.zeros(2, np.float32)})


class Sends:
    """A trainer whose update is whatever the test says (a vector, or a function of it)."""

    def __init__(self, update: Any) -> None:
        self.update = update

    def initial(self) -> Any:
        return SPEC, np.zeros(2, np.float32)

    def fit(self, weights: Any, x: Any, y: Any, settings: Any, seed: Any) -> Any:
        return weights + np.asarray(self.update, np.float32), {"loss": 1.0}

    def evaluate(self, weights: Any, x: Any, y: Any) -> Any:
        return {"loss": 0.0}


class WrongShape(Site):
    """Sends a reply of its own making: an update of 3 values for a model of 2."""

    def on_fit(self, ins: FitIns) -> FitRes:
        return FitRes(self.site_id, ins.round, np.ones(3, np.float32), 10, {})


def _site(sid: str, trainer: Any, n: int = 10) -> Site:
    x = np.zeros((n, 2), np.float32)
    return Site(sid, trainer, SiteData(x, np.zeros(n)))


def _workflow(
    sites: dict[str, Site], rules: UpdateRules, rounds: int = 1, min_replies: int = 1
) -> tuple[Workflow, DebugFleet]:
    """FedAvg over every site each round, with the given validation rules."""
    fleet = DebugFleet(list(sites), lambda s: sites[s])
    strategy = make_strategy(
        "fedavg",
        selection=UniformSelection(count=len(sites)),
        train=TrainSettings(),
        validation=rules,
    )
    settings = LoopSettings(rounds=rounds, min_fit_replies=min_replies)
    return Workflow(SPEC, standard_steps(strategy, settings), settings), fleet


def _round(sites: dict[str, Site], rules: UpdateRules, min_replies: int = 1) -> Any:
    workflow, fleet = _workflow(sites, rules, min_replies=min_replies)
    return workflow.run_round(workflow.initial_state(np.zeros(2, np.float32)), fleet)


def _reasons(record: Any) -> dict[str, str]:
    return {f.site: f.reason for f in record.failures}


def test_nan_inf_and_wrong_shape_are_refused_with_the_reason() -> None:
    sites = {
        "good": _site("good", Sends([1.0, 1.0])),
        "nan": _site("nan", Sends([np.nan, 0.0])),
        "inf": _site("inf", Sends([np.inf, 0.0])),
        "shape": WrongShape("shape", Sends(0), SiteData(np.zeros((1, 2)), np.zeros(1))),
    }
    state, record = _round(sites, UpdateRules())
    reasons = _reasons(record)
    assert "NaN or infinite" in reasons["nan"] and "NaN or infinite" in reasons["inf"]
    assert "3 values, the model has 2" in reasons["shape"]
    assert record.phases[0].accepted == ["good"]
    np.testing.assert_allclose(state.weights, [1.0, 1.0])


def test_over_norm_and_over_weight_updates_are_refused_and_the_round_goes_on() -> None:
    sites = {
        "a": _site("a", Sends([1.0, 0.0])),
        "big": _site("big", Sends([30.0, 40.0])),  # norm 50
        "greedy": _site("greedy", Sends([0.0, 1.0]), n=5000),
        "b": _site("b", Sends([0.0, 1.0])),
    }
    state, record = _round(sites, UpdateRules(max_norm=10.0, max_examples=1000))
    reasons = _reasons(record)
    assert "norm 50 is over the bound 10" in reasons["big"]
    assert "strategy.validation.max_norm" in reasons["big"]
    assert "claims 5000 examples, over the job's cap of 1000" in reasons["greedy"]
    assert record.replies == 2 and record.phases[0].accepted == ["a", "b"]
    np.testing.assert_allclose(state.weights, [0.5, 0.5])
    assert record.to_json()["failed_sites"]["big"].startswith("reply refused: update norm")


def test_relative_bound_refuses_against_the_rounds_median_norm() -> None:
    sites = {f"s{i}": _site(f"s{i}", Sends([float(i + 1), 0.0])) for i in range(4)}
    sites["loud"] = _site("loud", Sends([40.0, 0.0]))
    # norms 1, 2, 3, 4, 40: median 3, bound 3 x 3 = 9
    state, record = _round(sites, UpdateRules(max_norm_multiple=3.0))
    assert list(_reasons(record)) == ["loud"]
    assert "over 3 x the round's median norm 3" in _reasons(record)["loud"]
    assert record.replies == 4 and "loud" not in record.phases[0].accepted
    np.testing.assert_allclose(state.weights, [2.5, 0.0])


def test_refusals_that_leave_too_few_updates_fail_the_round_naming_why() -> None:
    sites = {
        "a": _site("a", Sends([1.0, 0.0])),
        "b": _site("b", Sends([100.0, 0.0])),
        "c": _site("c", Sends([100.0, 0.0])),
    }
    with pytest.raises(RoundFailedError, match=r"1 updates left after validation, at least 2"):
        _round(sites, UpdateRules(max_norm_multiple=0.5), min_replies=2)


def test_relative_refusals_by_hand() -> None:
    rules = UpdateRules(max_norm_multiple=2.0)
    assert relative_refusals([1.0, 2.0, 3.0, 7.0], rules)[:3] == [None, None, None]
    assert "over 2 x the round's median norm 2.5" in str(relative_refusals([1, 2, 3, 7], rules)[3])
    assert relative_refusals([1.0, 100.0], UpdateRules()) == [None, None]


def _job(**privacy: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "rounds": 1,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": {"validation": {"max_norm": 5.0}},
    }
    if privacy:
        data["privacy"] = {"sample_rate": 0.5, "clip_norm": 1.0, "noise_multiplier": 1.0}
        data["privacy"].update(privacy)
    else:
        data["strategy"]["sites_per_round"] = 2
    return data


def test_validation_settings_are_read_from_the_job_file() -> None:
    job = parse_job(_job())
    assert job.strategy.validation.max_norm == 5.0
    with pytest.raises(ConfigError, match=r"strategy\.validation\.max_norms: .*did you mean"):
        data = _job()
        data["strategy"]["validation"] = {"max_norms": 5.0}
        parse_job(data)


def test_norm_rules_that_cannot_hold_under_dp_are_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.validation\.max_norm: under distributed"):
        parse_job(_job(mode="distributed"))
    assert parse_job(_job(mode="central")).strategy.validation.max_norm == 5.0
    data = _job(mode="central")
    data["strategy"]["validation"] = {"max_norm_multiple": 3.0}
    with pytest.raises(ConfigError, match=r"strategy\.validation\.max_norm_multiple: under cen"):
        parse_job(data)


def test_late_refusals_are_in_the_phase_record_that_is_published() -> None:
    from consortia.core.events import PhaseDone

    sites = {f"s{i}": _site(f"s{i}", Sends([float(i + 1), 0.0])) for i in range(4)}
    sites["loud"] = _site("loud", Sends([40.0, 0.0]))
    fleet = DebugFleet(list(sites), lambda s: sites[s])
    strategy = make_strategy(
        "fedavg",
        selection=UniformSelection(count=5),
        train=TrainSettings(),
        validation=UpdateRules(max_norm_multiple=3.0),
    )
    settings = LoopSettings(rounds=1)
    workflow = Workflow(SPEC, standard_steps(strategy, settings), settings)
    heard: list[tuple[list[str], list[str]]] = []  # as each subscriber saw it, then

    def listen(event: Any) -> None:
        if isinstance(event, PhaseDone):
            heard.append((list(event.phase.accepted), [f.site for f in event.phase.failures]))

    workflow.run_round(workflow.initial_state(np.zeros(2, np.float32)), fleet, listen)
    assert heard == [(["s0", "s1", "s2", "s3"], ["loud"])]


class Claims(Site):
    """An honest update (all ones) that claims ``claim`` examples, whatever it holds."""

    def __init__(self, sid: str, claim: int) -> None:
        super().__init__(sid, Sends([1.0, 1.0]), SiteData(np.zeros((3, 2)), np.zeros(3)))
        self.claim = claim

    def on_fit(self, ins: FitIns) -> FitRes:
        res = super().on_fit(ins)
        return FitRes(res.site, res.round, res.delta * self.claim_scale, self.claim, {})

    claim_scale = 1.0


def _rounds(sites: dict[str, Site], rules: UpdateRules, n: int) -> list[Any]:
    """``n`` rounds; the aggregate (the SGD step with lr 1) of each."""
    workflow, fleet = _workflow(sites, rules, rounds=n)
    state, out = workflow.initial_state(np.zeros(2, np.float32)), []
    for _ in range(n):
        new, record = workflow.run_round(state, fleet)
        out.append((new.weights - state.weights, record))
        state = new
    return out


def test_a_site_claiming_huge_counts_has_its_weight_capped_not_its_update_dropped() -> None:
    """Finding: a site's claimed example count was its weight with only a 2^53 bound. Its
    update (here: -100 where honest ones say +1) still counts, with a capped weight."""
    liar = Claims("liar", 2**52)
    liar.claim_scale = -100.0
    sites: dict[str, Site] = {s: Claims(s, 10) for s in ("a", "b", "c", "d")}
    sites["liar"] = liar
    # The job's own cap applies from round 1.
    ((step, record),) = _rounds(sites, UpdateRules(max_examples_per_site=20), 1)
    assert np.allclose(step, (4 * 10 * 1.0 + 20 * -100.0) / 60)
    assert record.metrics["capped_weights"] == 1.0 and not record.failures
    # The default (10 x the previous round's median weight): round 1 has no reference yet,
    # round 2 caps the liar at 10 x 10 = 100.
    (s1, _), (s2, r2) = _rounds(sites, UpdateRules(), 2)
    assert np.allclose(s1, (40.0 - 100.0 * 2**52) / (40 + 2**52))
    assert np.allclose(s2, (40.0 - 100.0 * 100) / 140)
    assert r2.metrics["capped_weights"] == 1.0
    # Switched off, nothing is capped.
    (_, _), (s2, _) = _rounds(sites, UpdateRules(max_weight_multiple=None), 2)
    assert np.allclose(s2, (40.0 - 100.0 * 2**52) / (40 + 2**52))


def test_weight_caps_are_read_from_the_job_file() -> None:
    base = {
        "name": "j",
        "rounds": 1,
        "task": {"framework": "numpy", "app": "a.py"},
        "strategy": {"preset": "fedavg", "sites_per_round": 2},
    }
    cfg = parse_job(
        {
            **base,
            "strategy": {
                **base["strategy"],
                "validation": {"max_examples_per_site": 500, "max_weight_multiple": 4.0},
            },
        }
    )
    assert cfg.strategy.validation.max_examples_per_site == 500
    assert parse_job(base).strategy.validation.max_weight_multiple == 10.0
    with pytest.raises(ConfigError, match="max_weight_multiple"):
        parse_job(
            {**base, "strategy": {**base["strategy"], "validation": {"max_weight_multiple": -1}}}
        )
    off = parse_job(
        {**base, "strategy": {**base["strategy"], "validation": {"max_weight_multiple": 0}}}
    )
    from consortia.server.build import strategy_from_config

    assert strategy_from_config(off).validation.max_weight_multiple is None
