"""Each attack changes updates as its paper describes; ByzFL is the oracle where it has one."""

import numpy as np
import pytest

from byzfl_oracle import attacks as byz_attacks
from consortia.attacks import data, vectors


def _honest(seed: int = 0, n: int = 8, d: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1.0 + rng.standard_normal((n, d))


@pytest.mark.parametrize("seed", range(5))
def test_omniscient_attacks_equal_byzfl(seed: int) -> None:
    h = _honest(seed)
    a = byz_attacks()
    np.testing.assert_allclose(vectors.sign_flip(h.mean(axis=0)), a.SignFlipping()(h))
    np.testing.assert_allclose(
        vectors.inner_product_manipulation(h, 2.5), a.InnerProductManipulation(2.5)(h)
    )
    np.testing.assert_allclose(vectors.a_little_is_enough(h, 1.3), a.ALittleIsEnough(1.3)(h))
    np.testing.assert_allclose(vectors.mimic(h, 3), a.Mimic(3)(h))


def test_alie_z_max_is_baruch_et_als() -> None:
    # n = 50, f = 24: s = floor(26) - 24 = 2 supporters needed, z = Phi^-1(48 / 50) = 1.7507
    assert vectors.alie_z(50, 24) == pytest.approx(1.7507, abs=1e-4)
    # n = 10, f = 2: s = 6 - 2 = 4, z = Phi^-1(0.6) = 0.2533
    assert vectors.alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)


def test_alie_stays_within_z_standard_deviations_of_every_coordinate() -> None:
    h = _honest(1)
    v = vectors.a_little_is_enough(h, 1.0)
    std = h.std(axis=0, ddof=1)
    np.testing.assert_allclose(v - h.mean(axis=0), std)


def test_ipm_turns_the_inner_product_of_the_mean_negative() -> None:
    # n - f honest, f attackers sending -eps x honest mean: the mean of all n is
    # ((n - f) - f eps) / n x honest mean, negative once eps > (n - f) / f.
    h = _honest(2, n=8)
    mu = h.mean(axis=0)
    attack = vectors.inner_product_manipulation(h, 5.0)
    everyone = np.vstack([h, attack, attack])  # f = 2, eps 5 > 8 / 2
    assert everyone.mean(axis=0) @ mu < 0
    milder = vectors.inner_product_manipulation(h, 1.0)  # eps 1 < 4: still positive
    assert np.vstack([h, milder, milder]).mean(axis=0) @ mu > 0


def test_sign_flip_scaling_and_gaussian() -> None:
    u = np.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(vectors.sign_flip(u), [-1.0, 2.0, -3.0])
    np.testing.assert_array_equal(vectors.scaling(u, 10.0), [10.0, -20.0, 30.0])
    noise = vectors.gaussian(100_000, 2.0, np.random.default_rng(0))
    assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(2.0, rel=0.02)


def test_label_flipping_mirrors_the_classes() -> None:
    classes = np.arange(10)
    np.testing.assert_array_equal(data.flip_labels(np.array([0, 1, 9, 4]), classes), [9, 8, 0, 5])
    np.testing.assert_array_equal(data.flip_labels(np.array([3, 7]), np.array([3, 5, 7])), [7, 3])


def test_backdoor_poisons_a_share_with_the_trigger_and_target() -> None:
    x = np.zeros((10, 6))
    y = np.arange(10) % 3
    xp, yp = data.backdoor(
        x, y, features=[4, 5], value=16.0, target=2, share=0.5, rng=np.random.default_rng(0)
    )
    poisoned = (xp[:, 4] == 16.0) & (xp[:, 5] == 16.0)
    assert poisoned.sum() == 5 and (yp[poisoned] == 2).all()
    np.testing.assert_array_equal(yp[~poisoned], y[~poisoned])
    assert (x == 0).all()  # the caller's data is untouched
    xt, yt = data.triggered_test_set(x, y, features=[4, 5], value=16.0, target=2)
    assert len(yt) == int((y != 2).sum()) and (yt == 2).all() and (xt[:, 4:] == 16).all()


def test_alie_gets_past_krum_and_shifts_the_median_as_baruch_et_al_describe() -> None:
    # 40 honest updates, 10 colluders sending mean + z_max x std: the attack hides within
    # the honest spread, so Krum picks it and every coordinate's median moves toward it.
    from consortia.strategy.robust import rules

    rng = np.random.default_rng(0)
    honest = rng.standard_normal((40, 50))
    z = vectors.alie_z(50, 10)
    attack = vectors.a_little_is_enough(honest, z)
    everyone = np.vstack([honest, np.tile(attack, (10, 1))])
    np.testing.assert_array_equal(rules.krum(everyone, 10), attack)
    shift = rules.coordinate_median(everyone) - np.median(honest, axis=0)
    assert np.all(shift * (attack - honest.mean(axis=0)) >= 0)  # toward the attack, everywhere
    far = vectors.a_little_is_enough(honest, 10.0)  # a blunt shift is no longer chosen
    assert not np.array_equal(rules.krum(np.vstack([honest, np.tile(far, (10, 1))]), 10), far)


def test_mimic_over_represents_the_copied_site() -> None:
    honest = _honest(4)
    copied = np.vstack([honest, np.tile(vectors.mimic(honest, 2), (3, 1))])
    before = np.linalg.norm(honest.mean(axis=0) - honest[2])
    assert np.linalg.norm(copied.mean(axis=0) - honest[2]) < before
