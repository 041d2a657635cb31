"""The attack fleet: chosen sites' fit replies rewritten, honest ones untouched; the job
file configures it; a simulated run records who attacked and the backdoor's success."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia
from consortia.attacks import AttackFleet, choose_malicious, vectors
from consortia.client.runtime import Site, SiteData
from consortia.core.config import parse_job
from consortia.core.errors import ConfigError
from consortia.core.messages import EvaluateIns, EvaluateRes, FitIns, FitRes, Reply, TrainSettings
from consortia.core.robustness_config import AttackConfig
from consortia.core.spec import ModelSpec
from consortia.fleet.base import Timing
from consortia.fleet.debug import DebugFleet

ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec.from_arrays({"w": np.zeros(3, np.float32)})


class Sends:
    def __init__(self, update: Any) -> None:
        self.update = np.asarray(update, np.float32)

    def initial(self) -> Any:
        return SPEC, np.zeros(3, np.float32)

    def fit(self, weights: Any, x: Any, y: Any, settings: Any, seed: Any) -> Any:
        return weights + self.update, {}

    def evaluate(self, weights: Any, x: Any, y: Any) -> Any:
        return {"loss": 0.0}


UPDATES = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0], "m1": [1.0, 1.0, 1.0]}
UPDATES["m2"] = [3.0, 3.0, 3.0]


def _send(kind: str, **options: Any) -> dict[str, np.ndarray]:
    sites = {
        s: Site(s, Sends(u), SiteData(np.zeros((4, 3)), np.zeros(4))) for s, u in UPDATES.items()
    }
    fleet = AttackFleet(
        DebugFleet(list(sites), lambda s: sites[s]),
        ["m1", "m2"],
        AttackConfig(kind=kind, **options),
    )
    ins = FitIns(1, np.zeros(3, np.float32), TrainSettings(), 0)
    out = list(fleet.send([(s, ins) for s in sites], Timing(10.0)))
    assert all(isinstance(o, Reply) and isinstance(o.message, FitRes) for o in out)
    return {o.site: o.message.delta for o in out}  # type: ignore[union-attr]


HONEST = np.array([UPDATES[s] for s in "abc"])


def test_honest_sites_are_untouched_whatever_the_attack() -> None:
    for kind in ("sign_flip", "scaling", "gaussian", "alie", "ipm", "mimic", "label_flip"):
        sent = _send(kind)
        for s in "abc":
            np.testing.assert_array_equal(sent[s], UPDATES[s])
        assert sent["a"].dtype == np.float32 and sent["m1"].dtype == np.float32


def test_colluding_and_lone_attackers() -> None:
    together = _send("sign_flip")
    np.testing.assert_allclose(together["m1"], [-2.0, -2.0, -2.0])  # -(mean of 1s and 3s)
    np.testing.assert_array_equal(together["m1"], together["m2"])
    alone = _send("scaling", collude=False, scale=10.0)
    np.testing.assert_allclose(alone["m1"], [10.0] * 3)
    np.testing.assert_allclose(alone["m2"], [30.0] * 3)
    lone_noise = _send("gaussian", collude=False, sigma=2.0)
    assert not np.array_equal(lone_noise["m1"], lone_noise["m2"])
    shared_noise = _send("gaussian", sigma=2.0)
    np.testing.assert_array_equal(shared_noise["m1"], shared_noise["m2"])


def test_omniscient_attacks_use_the_honest_updates_of_the_round() -> None:
    ipm = _send("ipm", epsilon=2.0)
    np.testing.assert_allclose(ipm["m1"], -2.0 * HONEST.mean(axis=0), rtol=1e-6)
    alie = _send("alie")
    z = vectors.alie_z(5, 2)
    expected = HONEST.mean(axis=0) + z * HONEST.std(axis=0, ddof=1)
    np.testing.assert_allclose(alie["m2"], expected, rtol=1e-6)
    np.testing.assert_allclose(_send("mimic")["m1"], HONEST[0])


def test_other_messages_pass_through() -> None:
    sites = {"m1": Site("m1", Sends([1, 1, 1]), SiteData(np.zeros((4, 3)), np.zeros(4)))}
    fleet = AttackFleet(DebugFleet(["m1"], lambda s: sites[s]), ["m1"], AttackConfig(kind="ipm"))
    (out,) = fleet.send([("m1", EvaluateIns(1, np.zeros(3, np.float32)))], Timing(10.0))
    assert isinstance(out, Reply) and isinstance(out.message, EvaluateRes)


def test_malicious_sites_are_a_fraction_drawn_from_the_seed() -> None:
    ids = [f"site-{i:04d}" for i in range(100)]
    chosen = choose_malicious(ids, AttackConfig(kind="sign_flip", fraction=0.2))
    assert len(chosen) == 20 and chosen == sorted(chosen)
    assert chosen == choose_malicious(ids, AttackConfig(kind="ipm", fraction=0.2))
    assert chosen != choose_malicious(ids, AttackConfig(kind="ipm", fraction=0.2, seed=1))


def test_attacks_that_know_the_honest_updates_need_collusion() -> None:
    with pytest.raises(ValueError, match="collude = true"):
        AttackConfig(kind="alie", collude=False)
    job = consortia.load_job(ROOT / "examples" / "breast_cancer" / "job.toml").model_dump()
    job["simulation"]["attack"] = {"kind": "mimc"}
    with pytest.raises(ConfigError, match=r"simulation\.attack\.kind: .*'mimic'"):
        parse_job(job)


def test_a_backdoored_run_reports_its_success_rate_and_its_attackers(tmp_path: Path) -> None:
    job = consortia.load_job(ROOT / "examples" / "breast_cancer" / "job.toml").model_dump()
    job["rounds"] = 3
    job["simulation"]["attack"] = {
        "kind": "backdoor",
        "fraction": 0.4,
        "target_label": 1,
        "poison_share": 1.0,
        "boost": 5.0,
        "trigger_value": 8.0,
    }
    result = consortia.simulate(
        parse_job(job), base_dir=ROOT / "examples" / "breast_cancer", out=tmp_path / "r", debug=True
    )
    assert len(result.summary["malicious_sites"]) == 2
    # A clean model labels almost none of the triggered inputs as the target (0.0 in this
    # job with 1% poisoned records and no boost); two boosted attackers of five, most.
    success = [row["backdoor_success"] for row in result.history]
    assert all(0.0 <= s <= 1.0 for s in success) and success[-1] > 0.5
