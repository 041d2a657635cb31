"""The robust aggregators as a job file names them: options, f per round, state, memory."""

from typing import Any

import numpy as np
import pytest

from consortia.core.config import aggregator_from_config, parse_job
from consortia.core.errors import ConfigError, RoundFailedError
from consortia.core.registry import AGGREGATORS
from consortia.strategy.robust import NormBoundedMean, RobustAggregator, rules

NAMES = [
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "norm_bounded_mean",
    "fltrust",
]


def _job(aggregator: str, **options: Any) -> dict[str, Any]:
    return {
        "rounds": 1,
        "task": {"framework": "numpy", "app": "app.py"},
        "strategy": {
            "sites_per_round": 10,
            "aggregator": aggregator,
            "aggregator_options": options,
        },
    }


def _run(agg: Any, rows: np.ndarray, state: dict[str, np.ndarray] | None = None) -> Any:
    rnd = agg.begin(rows.shape[1], rows.dtype, state or {})
    for i, row in enumerate(rows):
        rnd.add(f"site-{i}", row, 10, {})
    return rnd.result()


def test_every_robust_aggregator_is_registered_and_needs_every_update() -> None:
    for name in NAMES:
        assert AGGREGATORS.get(name).needs == "all", name  # type: ignore[attr-defined]


def test_options_come_from_the_job_file() -> None:
    job = parse_job(_job("multi_krum", f=2, m=4, pre=["nnm", "bucketing"], bucket_size=3))
    agg = aggregator_from_config(job.strategy)
    assert isinstance(agg, RobustAggregator)
    assert (agg.options.f, agg.options.m, agg.options.pre) == (2, 4, ["nnm", "bucketing"])  # type: ignore[attr-defined]
    assert AGGREGATORS.get("multi_krum").options.f is None  # type: ignore[attr-defined]
    bounded = aggregator_from_config(parse_job(_job("norm_bounded_mean", max_norm=3)).strategy)
    assert isinstance(bounded, NormBoundedMean) and bounded.options.max_norm == 3.0


@pytest.mark.parametrize(
    "aggregator, options, message",
    [
        ("krum", {"fk": 1}, r"strategy\.aggregator_options\.fk: unknown key.*did you mean 'f'"),
        ("krum", {"f": -1}, r"strategy\.aggregator_options\.f: .*greater than or equal to 0"),
        ("trimmed_mean", {"f_fraction": 0.5}, r"aggregator_options\.f_fraction: .*less than 0\.5"),
        ("median", {"pre": ["nnm", "shuffle"]}, r"aggregator_options\.pre\.1: .*'bucketing'"),
        ("centered_clipping", {"tau": 0}, r"aggregator_options\.tau: .*greater than 0"),
        ("norm_bounded_mean", {"max_norms": 1}, r"max_norms: unknown key.*did you mean 'max_norm'"),
        ("weighted_mean", {"f": 1}, r"aggregator_options: aggregator 'weighted_mean' takes no"),
    ],
)
def test_bad_options_are_refused_naming_the_field(
    aggregator: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_job(_job(aggregator, **options))


def test_f_derived_from_the_fraction_is_capped_at_what_the_rule_allows() -> None:
    krum = AGGREGATORS.get("krum").with_options({"f_fraction": 0.45})  # type: ignore[attr-defined]
    assert krum.f_for(10) == 4 and krum.f_for(4) == 1 and krum.f_for(1) == 0
    bulyan = AGGREGATORS.get("bulyan")
    assert [bulyan.f_for(n) for n in (3, 7, 11, 20)] == [0, 1, 2, 4]  # type: ignore[attr-defined]


def test_an_explicit_f_too_large_for_the_round_fails_it_naming_why() -> None:
    krum = AGGREGATORS.get("krum").with_options({"f": 2})  # type: ignore[attr-defined]
    rows = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(RoundFailedError, match=r"krum with f=2 .* 4 accepted"):
        _run(krum, rows)
    out, _ = _run(krum, np.vstack([rows, rows[:1]]))
    assert out.dtype == np.float32 and out.shape == (3,)


@pytest.mark.parametrize("name", NAMES)
def test_each_registered_aggregator_keeps_a_planted_outlier_out(name: str) -> None:
    rng = np.random.default_rng(1)
    honest = (0.5 + 0.05 * rng.standard_normal((10, 16))).astype(np.float32)
    rows = np.vstack([honest, np.full((1, 16), 500.0, np.float32)])
    options: dict[str, Any] = {"f": 1}
    if name == "norm_bounded_mean":
        options = {"max_norm": 2.0}
    elif name == "centered_clipping":
        options.update(tau=0.5, iters=5)
    agg = AGGREGATORS.get(name).with_options(options)  # type: ignore[attr-defined]
    state = {"root_update": np.full(16, 0.5)} if name == "fltrust" else {}
    out, _ = _run(agg, rows, state)
    assert np.linalg.norm(out - honest.mean(axis=0)) < 0.5, name
    assert np.linalg.norm(rows.mean(axis=0) - honest.mean(axis=0)) > 100


def test_pre_aggregation_steps_run_before_the_rule() -> None:
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    plain = AGGREGATORS.get("median").with_options({"f": 1})  # type: ignore[attr-defined]
    mixed = AGGREGATORS.get("median").with_options({"f": 1, "pre": ["nnm"]})  # type: ignore[attr-defined]
    assert _run(plain, rows)[0][0] == 2.0
    # NNM (4 nearest): 0->1.5, 1->1.5, 2->1.5, 3->1.5, 100->26.5: the median is 1.5
    assert _run(mixed, rows)[0][0] == pytest.approx(1.5)


def test_bucketing_shuffles_differently_each_round_and_reproducibly() -> None:
    agg = AGGREGATORS.get("krum").with_options(  # type: ignore[attr-defined]
        {"f": 0, "pre": ["bucketing"], "bucket_size": 2}
    )
    rows = np.arange(12, dtype=np.float64).reshape(6, 2)
    _, state1 = _run(agg, rows)
    assert state1["rounds"][0] == 1
    out2, state2 = _run(agg, rows, state1)
    assert state2["rounds"][0] == 2
    again, _ = _run(agg, rows, state1)
    np.testing.assert_array_equal(out2, again)


def test_centered_clipping_starts_from_last_rounds_aggregate() -> None:
    agg = AGGREGATORS.get("centered_clipping").with_options({"tau": 1.0})  # type: ignore[attr-defined]
    rows = np.array([[10.0, 0.0], [10.0, 0.0]])
    out1, state = _run(agg, rows)
    np.testing.assert_allclose(out1, [1.0, 0.0])  # one step of radius 1 from 0
    out2, state = _run(agg, rows, state)
    np.testing.assert_allclose(out2, [2.0, 0.0])  # the next from where the last ended
    np.testing.assert_allclose(state["center"], [2.0, 0.0])


def test_fltrust_without_a_root_update_fails_the_round() -> None:
    with pytest.raises(RoundFailedError, match="no root update"):
        _run(AGGREGATORS.get("fltrust"), np.ones((3, 2)))


def test_norm_bounded_mean_streams_and_weights_by_examples() -> None:
    agg = NormBoundedMean().with_options({"max_norm": 1.0})
    rnd = agg.begin(2, np.dtype(np.float32), {})
    rnd.add("a", np.array([3.0, 4.0], np.float32), 1, {})
    rnd.add("b", np.array([0.0, 1.0], np.float32), 3, {})
    assert not hasattr(rnd, "rows")  # nothing per site is kept
    out, _ = rnd.result()
    np.testing.assert_allclose(out, [0.15, 0.95], rtol=1e-6)


def test_centered_clipping_with_one_iteration_streams_the_same_result() -> None:
    rows = np.random.default_rng(3).standard_normal((7, 5)).astype(np.float32) * 3
    centre = np.random.default_rng(4).standard_normal(5)
    one = AGGREGATORS.get("centered_clipping").with_options({"tau": 1.5})  # type: ignore[attr-defined]
    rnd = one.begin(5, np.dtype(np.float32), {"center": centre})
    assert not hasattr(rnd, "rows")  # two vectors, not one per site
    for i, row in enumerate(rows):
        rnd.add(f"s{i}", row, 1, {})
    out, state = rnd.result()
    expected = rules.centered_clipping(rows, centre, 1.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(state["center"], expected)
    collected = AGGREGATORS.get("centered_clipping").with_options(  # type: ignore[attr-defined]
        {"tau": 1.5, "iters": 2}
    )
    assert hasattr(collected.begin(5, np.dtype(np.float32), {}), "rows")


def test_fltrust_streams_the_same_result_as_the_rule() -> None:
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((8, 6)).astype(np.float32)
    root = rng.standard_normal(6)
    agg = AGGREGATORS.get("fltrust")
    rnd = agg.begin(6, np.dtype(np.float32), {"root_update": root})
    assert not hasattr(rnd, "rows")
    for i, row in enumerate(rows):
        rnd.add(f"s{i}", row, 1, {})
    out, state = rnd.result()
    np.testing.assert_allclose(out, rules.fltrust(rows, root), rtol=1e-5, atol=1e-7)
    assert state == {} and out.dtype == np.float32
