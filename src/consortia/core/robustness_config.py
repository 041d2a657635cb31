"""The job file's robustness sections: update validation, the audit, simulated attacks.

Read by ``core/config.py`` as parts of the job file (same rules: unknown keys refused,
errors naming the field path); kept apart so that each module holds one idea.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationConfig(_Section):
    """Checks every update must pass before aggregation (besides its size and finite
    values, always checked); a refused update is recorded with its reason."""

    max_norm: float | None = Field(None, gt=0, description="refuse updates of larger L2 norm")
    max_norm_multiple: float | None = Field(
        None,
        gt=0,
        description="refuse updates whose norm exceeds this multiple of the round's median "
        "norm (holds the round's updates until all are in)",
    )
    max_examples: int | None = Field(
        None, ge=1, description="refuse updates claiming more examples (their weight) than this"
    )
    max_examples_per_site: int | None = Field(
        None, ge=1, description="cap a site's weight (its example count) at this many examples"
    )
    max_weight_multiple: float = Field(
        10.0,
        ge=0,
        description="cap a site's weight at this multiple of the previous round's median "
        "weight (0 switches the cap off)",
    )


class AuditConfig(_Section):
    """Audit scores per site and round (audit.jsonl); a site-round is flagged when a score
    passes its threshold (unset: reported, never flagging), a site in the run summary
    when flagged in at least ``site_share`` of its audited rounds."""

    max_norm_z: float | None = Field(5.0, gt=0, description="robust z-score of the norm")
    min_nearest_other: float | None = Field(
        0.01, ge=0, description="distance to the nearest other update / own norm (duplicates)"
    )
    max_cos_other: float | None = Field(None, ge=-1, le=1)
    min_cos_aggregate: float | None = Field(None, ge=-1, le=1)
    min_cos_others: float | None = Field(None, ge=-1, le=1, description="to the others' mean")
    min_cos_last_aggregate: float | None = Field(None, ge=-1, le=1)
    max_median_distance_z: float | None = Field(None, gt=0)
    min_cos_previous: float | None = Field(None, ge=-1, le=1, description="to its last update")
    site_share: float = Field(0.5, gt=0, le=1)

    def thresholds(self) -> dict[str, float | None]:
        return self.model_dump(exclude={"site_share"})


AttackKind = Literal[
    "label_flip", "sign_flip", "scaling", "gaussian", "backdoor", "alie", "ipm", "mimic"
]
OMNISCIENT = ("alie", "ipm", "mimic")


class AttackConfig(_Section):
    """Malicious sites in simulation: which attack, how many, whether they act together.

    ``collude``: the attackers pool what they know and send one vector (for alie, ipm and
    mimic, which know the honest updates as in their papers, it must be true); otherwise
    each attacks alone from its own update.
    """

    kind: AttackKind
    fraction: float = Field(0.2, gt=0, lt=1, description="share of the sites that attack")
    collude: bool = True
    seed: int = 0
    scale: float = Field(10.0, gt=0, description="scaling: the factor")
    sigma: float = Field(1.0, gt=0, description="gaussian: the noise's standard deviation")
    z: float | None = Field(None, description="alie: the shift (default: Baruch et al.'s z_max)")
    epsilon: float = Field(0.5, gt=0, description="ipm: send -epsilon x the honest mean")
    target_label: int = Field(0, description="backdoor: the label triggered inputs get")
    trigger_features: list[int] | None = Field(
        None, description="backdoor: the features the trigger sets (default: the last 4)"
    )
    trigger_value: float | None = Field(
        None, description="backdoor: the value they are set to (default: the data's maximum)"
    )
    poison_share: float = Field(
        0.5, gt=0, le=1, description="backdoor: share of an attacker's records poisoned"
    )
    boost: float = Field(
        1.0, gt=0, description="backdoor: the poisoned update's factor (model replacement)"
    )

    @model_validator(mode="after")
    def _knowledge(self) -> AttackConfig:
        if self.kind in OMNISCIENT and not self.collude:
            raise ValueError(
                f"{self.kind} attackers know the honest updates of the round (as in the "
                "paper): set collude = true"
            )
        return self
