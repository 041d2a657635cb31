"""Client-side stages applied to an update before it leaves the site.

Each stage is a pure function of (update, settings, randomness); the site composes them in
order (clip -> [noise and encode]) as the round's ClientPrivacy asks.
"""

from __future__ import annotations

import numpy as np

from consortia.core.errors import ConfigError
from consortia.core.messages import ClientPrivacy
from consortia.core.rng import derive_seed
from consortia.privacy.central import clip_update
from consortia.privacy.distributed import DistributedDiscreteGaussian
from consortia.privacy.rng import SecureRng


def noise_source(noise_seed: int | None, site_id: str, round_: int) -> SecureRng:
    """A CSPRNG keyed from the OS; from the site's own seed only in simulation.

    ``noise_seed`` is the site's, never the server's (``Site.noise_seed``): whoever knows it
    can regenerate the noise and subtract it, so it must not come from the party the
    noise hides the update from.
    """
    if noise_seed is None:
        return SecureRng()
    return SecureRng(derive_seed(noise_seed, "site-noise", round_, site_id))


def distributed_mechanism(p: ClientPrivacy, dimension: int) -> DistributedDiscreteGaussian:
    return DistributedDiscreteGaussian(
        p.clip_norm, p.scale, p.bits, p.noise_multiplier, p.min_sites, dimension
    )


def privatize(
    update: np.ndarray,
    p: ClientPrivacy,
    site_id: str,
    round_: int,
    noise_seed: int | None = None,
) -> tuple[np.ndarray, float | None]:
    """Return (what to send, adaptive-clipping bit or None)."""
    if p.mode == "central":
        clipped = clip_update(update, p.clip_norm)
        return clipped.vector.astype(update.dtype, copy=False), clipped.unclipped_bit
    if p.mode == "distributed":
        mech = distributed_mechanism(p, update.size)
        return mech.encode(update, noise_source(noise_seed, site_id, round_)), None
    raise ConfigError(f"unknown privacy mode {p.mode!r} in the server's instructions")
