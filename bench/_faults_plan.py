"""Who fails when, in the chaos fault benchmark: decided from the seed alone.

Both runs (the reference and the one whose server is killed) must lose the same sites in
the same rounds, whatever the timing of either; so a fate is a pure function of (seed,
round, site), here a SHA-256 of the three, never of the wall clock or of Python's
per-process ``hash``. Each round exactly ``round(fraction * sites)`` sites are faulty (the
job's ``min_replies`` is the number of healthy ones, so the phase ends the moment the last
healthy site has answered); a second hash splits them into SIGKILLed and stalled.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

Fate = Literal["kill", "stall"]


def _draw(seed: int, rnd: int, site: str, what: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{rnd}\0{site}\0{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Plan:
    sites: tuple[str, ...]
    rounds: int
    fraction: float
    seed: int
    server_kills: int = 2

    def __post_init__(self) -> None:
        if len(self.sites) < 2 or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"at least 2 distinct sites are needed, got {list(self.sites)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 0 <= self.fraction < 1:
            raise ValueError(f"fraction must lie in [0, 1), got {self.fraction}")
        if self.faulty_per_round >= len(self.sites):
            raise ValueError(
                f"fraction {self.fraction} of {len(self.sites)} sites leaves no healthy site"
            )
        if not 0 <= self.server_kills <= self.rounds:
            raise ValueError(
                f"server kills must lie in [0, rounds={self.rounds}], got {self.server_kills}"
            )

    @property
    def faulty_per_round(self) -> int:
        return round(self.fraction * len(self.sites))

    @property
    def healthy_per_round(self) -> int:
        return len(self.sites) - self.faulty_per_round

    def fates(self, rnd: int) -> dict[str, Fate]:
        """The round's faulty sites and what happens to each."""
        ranked = sorted(self.sites, key=lambda s: (_draw(self.seed, rnd, s, "faulty"), s))
        return {
            s: ("kill" if _draw(self.seed, rnd, s, "how") % 2 == 0 else "stall")
            for s in sorted(ranked[: self.faulty_per_round])
        }

    def healthy(self, rnd: int) -> list[str]:
        fates = self.fates(rnd)
        return [s for s in self.sites if s not in fates]

    def server_kill_rounds(self) -> list[int]:
        """Distinct rounds in which the server is SIGKILLed mid-round; after round 1 where
        the job is long enough, so that a resume has a completed round to start from."""
        first = 2 if self.rounds - 1 >= self.server_kills else 1
        pool = list(range(first, self.rounds + 1))
        return sorted(random.Random(self.seed).sample(pool, self.server_kills))
