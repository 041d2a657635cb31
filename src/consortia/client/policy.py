"""A site's own policy: the rounds it will take part in, whatever the server says.

The site recomputes the privacy cost of a round from the parameters the server declares
(noise, sampling rate, round number, mechanism) with its own accountant, and refuses a
round that would take it past its limit. Projections assume the site took part in every
round so far, which over-counts and so never under-protects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from consortia.core.errors import ConfigError, ConsortiaError
from consortia.core.messages import FitIns
from consortia.privacy.accountant import PrivacyEvent, rdp_epsilon
from consortia.privacy.distributed import DistributedDiscreteGaussian


class PolicyRefusal(ConsortiaError):
    """The site refuses this round; the message says which rule and by how much."""


def projected_events(ins: FitIns, num_examples: int, dimension: int) -> list[PrivacyEvent]:
    """Privacy events of rounds 1..ins.round as this site can compute them itself."""
    events: list[PrivacyEvent] = []
    p, s, r = ins.privacy, ins.settings, ins.round
    if p is not None and p.mode == "central":
        events.append(PrivacyEvent("gaussian", p.noise_multiplier, p.sample_rate, r))
    elif p is not None and p.mode == "distributed":
        mech = DistributedDiscreteGaussian(
            p.clip_norm, p.scale, p.bits, p.noise_multiplier, p.min_sites, dimension
        )
        events.append(mech.privacy_event(p.min_sites, count=r))
    if s.local_dp and num_examples > 0:
        batch = min(s.batch_size, num_examples)
        steps = s.local_epochs * (num_examples // batch)
        events.append(
            PrivacyEvent("gaussian", s.dp_noise_multiplier, batch / num_examples, r * steps)
        )
    return events


@dataclass(frozen=True)
class SitePolicy:
    """``max_epsilon``: the most the site will spend (at ``delta``) on this job;
    ``require_privacy``: refuse any round that carries no differential privacy at all."""

    max_epsilon: float | None = None
    delta: float = 1e-5
    require_privacy: bool = False

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"site policy: max_epsilon must be > 0, got {self.max_epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"site policy: delta must be in (0, 1), got {self.delta}")

    def check_fit(self, site_id: str, ins: FitIns, num_examples: int, dimension: int) -> None:
        private = ins.privacy is not None or ins.settings.local_dp
        if self.require_privacy and not private:
            raise PolicyRefusal(
                f"site {site_id} refuses round {ins.round}: its policy requires differential "
                "privacy and the job has none"
            )
        if self.max_epsilon is None:
            return
        events = projected_events(ins, num_examples, dimension)
        eps = rdp_epsilon(events, self.delta) if events else math.inf
        if eps is None or eps > self.max_epsilon:
            shown = "unbounded" if eps is None or math.isinf(eps) else f"{eps:.4g}"
            raise PolicyRefusal(
                f"site {site_id} refuses round {ins.round}: its epsilon would reach {shown}, "
                f"over its limit of {self.max_epsilon:g} (delta {self.delta:g})"
            )
