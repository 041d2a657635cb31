"""Local DP-SGD with Opacus leaves the user's module as it was, learns, and accounts steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from consortia.core.errors import ConfigError
from consortia.privacy.accountant import PrivacyAccountant
from consortia.privacy.local import dp_sgd_fit
from consortia.privacy.rng import SecureRng


def _data(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_keys_kept_learns_and_repeatable() -> None:
    x, y = _data()
    model = _model()
    keys = list(model.state_dict().keys())
    before = _accuracy(model, x, y)
    kw = dict(epochs=3, batch_size=40, lr=0.5, noise_multiplier=0.5, max_grad_norm=1.0)
    first = dp_sgd_fit(model, x, y, seed=1, **kw)  # type: ignore[arg-type]
    assert list(model.state_dict().keys()) == keys  # no "_module." prefix
    second = dp_sgd_fit(model, x, y, seed=2, **kw)  # second round on the same module
    assert list(model.state_dict().keys()) == keys
    assert _accuracy(model, x, y) > max(before, 0.85)
    assert first.steps == second.steps == 3 * (400 // 40)
    assert first.sample_rate == pytest.approx(0.1)
    assert len(first.epoch_losses) == 3
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    copy.deepcopy(model)  # nothing un-copyable left behind


def test_seed_reproducible() -> None:
    x, y = _data(200)
    a, b = _model(), _model()
    kw = dict(epochs=1, batch_size=20, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0)
    dp_sgd_fit(a, x, y, seed=7, **kw)  # type: ignore[arg-type]
    dp_sgd_fit(b, x, y, seed=7, **kw)  # type: ignore[arg-type]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_noise_and_clipping_bound_each_step() -> None:
    # One step with lr 1 and no noise: the update is the mean of clipped per-example grads,
    # so its norm is at most max_grad_norm * (batch / expected batch) <= a few * 0.01.
    x, y = _data(200)
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    dp_sgd_fit(
        model,
        x,
        y,
        epochs=1,
        batch_size=200,
        lr=1.0,
        noise_multiplier=0.0,
        max_grad_norm=0.01,
        seed=0,
    )
    with torch.no_grad():
        moved = torch.sqrt(
            sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True))
        )
    assert 0 < float(moved) <= 0.01 + 1e-6


def test_privacy_event_accounts_steps() -> None:
    x, y = _data(100)
    result = dp_sgd_fit(
        _model(),
        x,
        y,
        epochs=2,
        batch_size=10,
        lr=0.1,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        seed=0,
    )
    event = result.privacy_event()
    assert (event.noise_multiplier, event.sample_rate, event.count) == (1.1, 0.1, 20)
    acc = PrivacyAccountant()
    acc.record(event)
    assert 0 < acc.epsilon(1e-5)["rdp"] < 10  # type: ignore[operator]


def test_empty_poisson_batches_are_fine() -> None:
    x, y = _data(10)  # rate 0.1: about a third of the 50 batches are empty
    model = _model()
    result = dp_sgd_fit(
        model, x, y, epochs=5, batch_size=1, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0, seed=3
    )
    assert result.steps == 50
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_arguments() -> None:
    x, y = _data(10)
    with pytest.raises(ConfigError, match="batch_size"):
        dp_sgd_fit(
            _model(),
            x,
            y,
            epochs=1,
            batch_size=11,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            seed=0,
        )
    with pytest.raises(ConfigError, match="same non-zero length"):
        dp_sgd_fit(
            _model(),
            x,
            y[:5],
            epochs=1,
            batch_size=2,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            seed=0,
        )


def test_dp_sgd_noise_and_batches_come_from_the_secure_generator(monkeypatch) -> None:
    """Finding 10 (issue 9): DP-SGD's noise and Poisson batches come from our ChaCha20
    SecureRng, never from torch's Mersenne Twister (torch.normal / torch.rand)."""
    x, y = _data(100)
    model = _model()
    n_params = sum(p.numel() for p in model.parameters())

    def forbidden(*args, **kwargs):
        raise AssertionError("torch's generator was used for DP randomness")

    monkeypatch.setattr(torch, "normal", forbidden)
    monkeypatch.setattr(torch, "rand", forbidden)
    draws: list[tuple[int, float]] = []
    real_normal = SecureRng.normal

    def spy(self, size, std=1.0):
        draws.append((size, std))
        return real_normal(self, size, std)

    monkeypatch.setattr(SecureRng, "normal", spy)
    result = dp_sgd_fit(
        model,
        x,
        y,
        epochs=1,
        batch_size=10,
        lr=0.1,
        noise_multiplier=1.5,
        max_grad_norm=2.0,
        seed=None,
    )
    # One draw per parameter tensor per step, of std z * C, covering every weight.
    assert len(draws) == result.steps * len(list(model.parameters()))
    assert {std for _, std in draws} == {3.0}
    assert sum(size for size, _ in draws[: len(list(model.parameters()))]) == n_params
