"""Float updates to fixed point in Z_(2^b), summed without wrapping, and back.

Secure aggregation adds integers modulo 2^b: the masks are uniform in that ring, so the
plain values must be ring elements too, and their sum must not wrap or the server decodes
garbage. Each coordinate is clipped to [-clip, clip], shifted to [0, 2 clip], multiplied by
``scale`` and rounded *stochastically* (up with probability equal to the fractional part),
so each encoding is an integer in [0, L] with L = ceil(2 clip scale) whose expectation is
exactly the scaled value: the decoded sum is an unbiased estimate of the clipped sum, with
no drift over many rounds as round-to-nearest would give.

Error bound (exact for this rounding): each site's rounding moves a scaled coordinate by
less than 1, so for n sites, per coordinate,

    | decode_sum(sum of the n encodings, n) - sum of the n clipped values | < n / scale

(up to float64 rounding of the arithmetic itself, ~1e-16 relative). ``bits_for`` picks the
smallest b with n L < 2^b, so the sum of n encodings can never wrap.

Distributed DP (``consortia.privacy.distributed``) produces its own ring elements (signed
integers reduced mod 2^bits); masking sums those exactly as it sums these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from consortia.secagg.context import SecAggError

MAX_BITS = 64  # masks are uint64 arithmetic: 2^b must divide 2^64
CHUNK_VALUES = 1 << 14  # coordinates encoded per slice (128 KiB of float64)


class UniformSource(Protocol):
    """Anything that gives float64 uniforms in [0, 1): ``SecureRng`` or a NumPy Generator."""

    def random(self, size: int) -> np.ndarray:  # pragma: no cover - protocol
        """Return ``size`` uniforms in [0, 1)."""
        ...


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SecAggError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise SecAggError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def max_level(clip: float, scale: float) -> int:
    """L = ceil(2 clip scale): the largest integer one coordinate can encode to."""
    span = 2.0 * _check_positive("clip", clip) * _check_positive("scale", scale)
    if span > 2.0**52:
        raise SecAggError(f"2 * clip * scale = {span:.3g} exceeds 2**52 (float64 integers)")
    return max(1, math.ceil(span))


def bits_for(n_sites: int, clip: float, scale: float) -> int:
    """The smallest b such that the sum of ``n_sites`` encodings (each <= L) is < 2^b."""
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise SecAggError(f"n_sites must be an int >= 1, got {n_sites!r}")
    bits = (n_sites * max_level(clip, scale)).bit_length()
    if bits > MAX_BITS:
        raise SecAggError(
            f"{n_sites} sites at clip {clip} and scale {scale} need {bits} bits > {MAX_BITS}; "
            "lower the scale"
        )
    return bits


@dataclass(frozen=True)
class FixedPoint:
    """The encoding every site and the server share for one job: clip, scale and bits."""

    clip: float
    scale: float
    bits: int

    def __post_init__(self) -> None:
        level = max_level(self.clip, self.scale)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise SecAggError(f"bits must be an int, got {self.bits!r}")
        if not level.bit_length() <= self.bits <= MAX_BITS:
            raise SecAggError(
                f"bits must be in [{level.bit_length()}, {MAX_BITS}] for clip {self.clip} "
                f"and scale {self.scale}, got {self.bits}"
            )

    @classmethod
    def for_sites(cls, n_sites: int, clip: float, scale: float) -> FixedPoint:
        """The encoding whose ring just holds the sum of ``n_sites`` encodings."""
        return cls(clip, scale, bits_for(n_sites, clip, scale))

    @property
    def level(self) -> int:
        return max_level(self.clip, self.scale)

    @property
    def max_sites(self) -> int:
        """How many encodings this ring can sum without wrapping."""
        return ((1 << self.bits) - 1) // self.level

    def encode(
        self,
        update: np.ndarray,
        rng: UniformSource,
        *,
        weight: float = 1.0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Clip ``weight * update``, shift, scale and round stochastically: values in [0, L],
        as uint64, or written into ``out`` (an unsigned vector as long, wide enough for L:
        a site writes straight into the 32-bit words it masks)."""
        x = np.asarray(update)
        if x.ndim != 1 or x.dtype.kind not in "fiu":
            raise SecAggError(f"update must be a 1-D numeric vector, got {x.dtype} {x.shape}")
        if out is None:
            out = np.empty(x.size, dtype=np.uint64)
        elif out.shape != x.shape or out.dtype.kind != "u" or np.iinfo(out.dtype).max < self.level:
            raise SecAggError(f"out must be an unsigned {x.shape} vector holding {self.level}")
        # In slices of CHUNK_VALUES: the float temporaries stay small and cache-resident; on
        # the whole vector each would be a fresh model-sized allocation (page faults on
        # every call). The rng is drawn slice by slice, which continues its stream.
        for start in range(0, x.size, CHUNK_VALUES):
            scaled = x[start : start + CHUNK_VALUES].astype(np.float64)  # a copy: in place below
            if weight != 1.0:
                scaled *= weight
            if not np.isfinite(scaled).all():
                bad = start + int(np.flatnonzero(~np.isfinite(scaled))[0])
                raise SecAggError(f"update has non-finite values, first at index {bad}")
            np.clip(scaled, -self.clip, self.clip, out=scaled)
            scaled += self.clip
            scaled *= self.scale
            # floor(s + u), u uniform in [0, 1): s's integer part plus 1 with probability
            # equal to its fractional part (stochastic rounding), never above L as s <= L
            scaled += rng.random(scaled.size)
            np.floor(scaled, out=scaled)
            np.minimum(scaled, self.level, out=scaled)
            out[start : start + scaled.size] = scaled
        return out

    def decode_sum(self, total: np.ndarray, n_sites: int) -> np.ndarray:
        """The sum of ``n_sites`` clipped updates from the sum of their encodings."""
        if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
            raise SecAggError(f"n_sites must be an int >= 1, got {n_sites!r}")
        if n_sites > self.max_sites:
            raise SecAggError(f"{n_sites} sites exceed the {self.max_sites} this ring holds")
        s = np.asarray(total)
        if s.ndim != 1 or s.dtype != np.uint64:
            raise SecAggError(f"sum must be a 1-D uint64 vector, got {s.dtype} {s.shape}")
        over = np.flatnonzero(s > np.uint64(n_sites * self.level))
        if over.size:
            raise SecAggError(
                f"sum exceeds {n_sites} sites' largest encoding at index {int(over[0])}: "
                "wrong site count or a corrupted sum"
            )
        return s.astype(np.float64) / self.scale - n_sites * self.clip
