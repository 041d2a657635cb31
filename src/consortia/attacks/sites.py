"""The attack as the simulation sets it up: poisoned data for the malicious sites, and the
backdoor's trigger and its success rate on the server's test set."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from consortia.attacks import data as poison
from consortia.client.runtime import SiteData
from consortia.core.rng import generator
from consortia.core.robustness_config import AttackConfig


@dataclasses.dataclass(frozen=True)
class Trigger:
    features: list[int]
    value: float
    target: int


def trigger_for(attack: AttackConfig, x_train: Any) -> Trigger:
    """The backdoor's pattern: the configured features and value, else the last 4 features
    set to the training data's maximum."""
    x = np.asarray(x_train)
    if x.ndim != 2:
        raise ValueError("the backdoor attack needs tabular (n, features) inputs")
    features = attack.trigger_features or list(range(x.shape[1] - 4, x.shape[1]))
    value = attack.trigger_value if attack.trigger_value is not None else float(x.max())
    return Trigger(features, value, attack.target_label)


def poison_sites(
    sites: dict[str, SiteData],
    malicious: Sequence[str],
    attack: AttackConfig,
    classes: np.ndarray,
    trigger: Trigger | None,
) -> dict[str, SiteData]:
    """The malicious sites' data, poisoned as the attack says (others unchanged)."""
    if attack.kind not in ("label_flip", "backdoor"):
        return sites
    out = dict(sites)
    for sid in malicious:
        d = sites[sid]
        if attack.kind == "label_flip":
            out[sid] = dataclasses.replace(d, y_train=poison.flip_labels(d.y_train, classes))
        else:
            assert trigger is not None
            x, y = poison.backdoor(
                np.asarray(d.x_train),
                np.asarray(d.y_train),
                features=trigger.features,
                value=trigger.value,
                target=trigger.target,
                share=attack.poison_share,
                rng=generator(attack.seed, "backdoor", sid),
            )
            out[sid] = dataclasses.replace(d, x_train=x, y_train=y)
    return out


def backdoor_metric(
    evaluate: Callable[[np.ndarray, Any, Any], dict[str, float]],
    x_test: Any,
    y_test: Any,
    trigger: Trigger,
) -> Callable[[np.ndarray], dict[str, float]]:
    """``backdoor_success``: the share of triggered test inputs (not already of the target
    class) that the model labels as the target."""
    xs, ys = poison.triggered_test_set(
        np.asarray(x_test),
        np.asarray(y_test),
        features=trigger.features,
        value=trigger.value,
        target=trigger.target,
    )

    def metric(weights: np.ndarray) -> dict[str, float]:
        return {"backdoor_success": float(evaluate(weights, xs, ys)["accuracy"])}

    return metric
