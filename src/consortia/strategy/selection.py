"""Which sites take part in a round."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from consortia.core.errors import ConfigError
from consortia.core.rng import derive_seed, generator


@dataclass(frozen=True)
class UniformSelection:
    """Uniform sampling without replacement of a fraction or a count, never below a minimum.

    ``count`` wins over ``fraction`` when both are given. Seeded per round, so a resumed
    run selects the same sites as an uninterrupted one.
    """

    fraction: float | None = None
    count: int | None = None
    min_sites: int = 1

    def __post_init__(self) -> None:
        if self.count is None and self.fraction is None:
            raise ConfigError("selection needs a fraction or a count of sites")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"selection fraction must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"selection count must be >= 1, got {self.count}")
        if self.min_sites < 1:
            raise ConfigError(f"min_sites must be >= 1, got {self.min_sites}")

    def how_many(self, available: int) -> int:
        if self.count is not None:
            want = self.count
        else:
            want = math.ceil((self.fraction or 0.0) * available)
        return min(available, max(want, self.min_sites))

    def select(self, available: Sequence[str], round_: int, seed: int) -> list[str]:
        pool = sorted(available)
        if len(pool) < self.min_sites:
            raise ConfigError(
                f"round {round_} needs at least {self.min_sites} sites, {len(pool)} available"
            )
        k = self.how_many(len(pool))
        rng = generator(seed, "select", round_)
        chosen = rng.choice(len(pool), size=k, replace=False)
        return [pool[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class PoissonSelection:
    """Each site takes part independently with probability ``rate`` (Poisson sampling).

    This is the sampling the DP accountants' amplification bounds assume, so DP jobs use it
    instead of a fixed-size sample. The coin flips come from a ChaCha20 CSPRNG keyed by the
    OS; ``seeded`` (tests and debug runs only) keys it from (seed, round) instead.
    """

    rate: float
    seeded: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise ConfigError(f"privacy.sample_rate must be in (0, 1], got {self.rate}")

    def how_many(self, available: int) -> int:
        """Expected number of sites a round (the actual number varies)."""
        return max(1, math.ceil(self.rate * available))

    def select(self, available: Sequence[str], round_: int, seed: int) -> list[str]:
        from consortia.privacy.rng import SecureRng
        from consortia.privacy.sampling import poisson_sample

        rng = SecureRng(derive_seed(seed, "poisson", round_)) if self.seeded else SecureRng()
        return poisson_sample(sorted(available), self.rate, rng)


Selection = UniformSelection | PoissonSelection
