"""A site's DP noise is its own: the server can neither choose nor learn its seed.

These tests play the honest-but-curious server of distributed and local DP: it follows the
protocol and keeps everything it sends and receives, and would like to regenerate a site's
noise to subtract it from the site's encoded update.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from consortia.cli.client import refuse_seeded_noise
from consortia.client.runtime import Site, SiteData
from consortia.core.config import PrivacyConfig
from consortia.core.errors import ConfigError
from consortia.core.messages import FitIns, InvalidMessageError, TrainSettings, decode, encode
from consortia.core.payload import Payload
from consortia.server.privacy import PrivacyController

DIM = 64


class RecordingTrainer:
    """Moves every weight by 0.1 and remembers the settings and seed it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[TrainSettings, int]] = []

    def fit(self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int):
        self.calls.append((settings, seed))
        return weights + np.float32(0.1), {"loss": 0.0}


def _site(noise_seed: int | None = None) -> Site:
    data = SiteData(np.zeros((8, 2), np.float32), np.zeros(8, np.int64))
    return Site("s1", RecordingTrainer(), data, noise_seed=noise_seed)  # type: ignore[arg-type]


def _server_request(seed: int = 7) -> FitIns:
    """The fit request a *seeded* distributed-DP server sends: all the server knows."""
    cfg = PrivacyConfig(
        mode="distributed", sample_rate=0.5, clip_norm=1.0, noise_multiplier=1.0, min_sites=4
    )
    ctl = PrivacyController(cfg, eligible_sites=10, dimension=DIM, rounds=3, seed=seed, seeded=True)
    return FitIns(1, np.zeros(DIM, np.float32), TrainSettings(), seed, ctl.client_privacy())


def test_the_servers_seed_does_not_determine_a_sites_noise():
    """Finding 1: sites used noise seeds chosen by the server (`noise_seed` in the fit
    message); with the same server seed, two runs must now give different site noise."""
    ins = _server_request()
    # Everything the server sends, as it travels: no seed for the site's noise in it.
    sent = encode(ins)
    assert not [k for k in sent.scalars if "seed" in k and k != "seed"]
    first = _site().handle(decode(sent, reply=False))
    second = _site().handle(decode(encode(_server_request()), reply=False))
    assert first.delta.dtype == np.uint64 and not first.seeded_noise
    # Identical inputs and server seed; the encodings differ in most coordinates.
    assert np.mean(first.delta != second.delta) > 0.5


def test_a_server_cannot_slip_a_seed_or_the_seeded_flag_onto_the_wire():
    """Finding 1: the site refuses a fit message that carries a noise seed or turns on
    seeded DP-SGD noise; neither is a field the server may send."""
    sent = encode(_server_request())
    for extra in ({"privacy.noise_seed": 7}, {"settings.dp_seeded_noise": True}):
        forged = Payload(sent.kind, sent.round, sent.arrays, {**sent.scalars, **extra})
        with pytest.raises(InvalidMessageError, match="unknown fields"):
            decode(forged, reply=False)


def test_the_seeded_flag_set_in_process_is_ignored_by_the_site():
    """Finding 1: in-process fleets skip the wire; the site decides the flag itself."""
    site = _site()
    dp = TrainSettings(dp_noise_multiplier=1.0, dp_seeded_noise=True)
    site.handle(FitIns(1, np.zeros(DIM, np.float32), dp, 11))
    trainer = site.trainer
    assert isinstance(trainer, RecordingTrainer)
    settings, seed = trainer.calls[-1]
    assert settings.dp_seeded_noise is False and seed == 11


def test_a_site_local_seed_makes_noise_reproducible_and_is_reported():
    """Simulation's reproducible runs: the seed is the site's own setting."""
    ins = _server_request()
    a, b = _site(noise_seed=3).handle(ins), _site(noise_seed=3).handle(ins)
    np.testing.assert_array_equal(a.delta, b.delta)
    assert a.seeded_noise and b.seeded_noise
    other = _site(noise_seed=4).handle(ins)
    assert np.mean(other.delta != a.delta) > 0.5
    # Local DP-SGD: the seed the trainer gets for its noise is the site's, not the server's.
    site = _site(noise_seed=3)
    reply = site.handle(
        FitIns(2, np.zeros(DIM, np.float32), TrainSettings(dp_noise_multiplier=1.0), 11)
    )
    assert reply.seeded_noise
    assert isinstance(site.trainer, RecordingTrainer)
    settings, seed = site.trainer.calls[-1]
    assert settings.dp_seeded_noise is True and seed != 11


def test_consortia_client_refuses_a_seeded_site():
    """Finding 1: seeding is refused in deployment, full stop."""
    with pytest.raises(ConfigError, match="site s1: its app sets noise_seed"):
        refuse_seeded_noise(_site(noise_seed=3), "s1")
    refuse_seeded_noise(_site(), "s1")


def test_no_message_field_carries_a_noise_seed():
    from consortia.core.messages import ClientPrivacy

    assert "noise_seed" not in {f.name for f in dataclasses.fields(ClientPrivacy)}
