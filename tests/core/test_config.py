from pathlib import Path

import pytest

from consortia.core.config import load_job, parse_job
from consortia.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _job(**over):
    job = {
        "rounds": 3,
        "task": {"framework": "torch", "app": "app.py"},
        "strategy": {"sites_per_round": 2},
        "simulation": {"sites": 4},
    }
    job.update(over)
    return job


def test_example_jobs_parse():
    for name in ("digits", "breast_cancer"):
        cfg = load_job(ROOT / "examples" / name / "job.toml")
        assert cfg.rounds >= 1 and cfg.simulation is not None


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"strategy\.sites_per_rund: unknown key"):
        parse_job(_job(strategy={"sites_per_round": 2, "sites_per_rund": 3}))


def test_wrong_type_names_the_field_path():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        parse_job(_job(train={"lr": -1}))
    with pytest.raises(ConfigError, match=r"simulation\.partition\.alpha"):
        parse_job(_job(simulation={"sites": 4, "partition": {"method": "dirichlet", "alpha": "x"}}))


def test_missing_required_setting_is_named():
    job = _job()
    del job["rounds"]
    with pytest.raises(ConfigError, match="rounds: required setting is missing"):
        parse_job(job)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="not both"):
        parse_job(_job(strategy={"sites_per_round": 2, "fraction": 0.5}))
    with pytest.raises(ConfigError, match="needs alpha"):
        parse_job(_job(simulation={"sites": 4, "partition": {"method": "dirichlet"}}))
    with pytest.raises(ConfigError, match="local_eval_fraction"):
        parse_job(_job(evaluation={"federated_every": 1, "federated_sites": 2}))


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_job(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "section, key, suggestion",
    [
        ({"strategy": {"sites_per_round": 1, "min_site": 2}}, "strategy.min_site", "min_sites"),
        ({"round": 1}, "round", "rounds"),
        (
            {"strategy": {"sites_per_round": 1, "server_optimizer": {"lrr": 1}}},
            "strategy.server_optimizer.lrr",
            "lr",
        ),
        (
            {"simulation": {"sites": 3, "partition": {"methd": "iid"}}},
            "simulation.partition.methd",
            "method",
        ),
        (
            {"analytics": {"queries": [{"name": "n", "kind": "count", "epsilo": 1.0}]}},
            r"analytics\.queries\.0\.epsilo",
            "epsilon",
        ),
    ],
)
def test_an_unknown_key_suggests_the_closest_known_one(section, key, suggestion) -> None:
    data = {
        "rounds": 1,
        "task": {"framework": "numpy", "app": "a.py"},
        "strategy": {"sites_per_round": 1},
        **section,
    }
    with pytest.raises(ConfigError, match=rf"{key}: unknown key .*did you mean '{suggestion}'\?"):
        parse_job(data)


def test_an_unknown_key_with_nothing_close_gets_no_guess() -> None:
    data = {"rounds": 1, "task": {"framework": "numpy", "app": "a.py"}, "zzz": 1}
    data["strategy"] = {"sites_per_round": 1}
    with pytest.raises(ConfigError) as info:
        parse_job(data)
    assert "zzz: unknown key" in str(info.value) and "did you mean" not in str(info.value)
