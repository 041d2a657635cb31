import numpy as np
import pytest

from consortia.core.errors import ConfigError
from consortia.strategy.server_opt import SGD, Adagrad, Adam, Momentum, Yogi, make_server_optimizer

X = np.array([1.0, -2.0])
D = np.array([0.5, 1.0])


def test_sgd_lr1_is_fedavg():
    x, state = SGD().step(SGD().init(X), X, D)
    np.testing.assert_allclose(x, [1.5, -1.0])
    x, _ = SGD(lr=0.1).step(state, X, D)
    np.testing.assert_allclose(x, [1.05, -1.9])


def test_momentum_two_steps_by_hand():
    opt = Momentum(lr=1.0, momentum=0.5)
    x1, s1 = opt.step(opt.init(X), X, D)  # m = d = [0.5, 1]
    np.testing.assert_allclose(x1, [1.5, -1.0])
    x2, s2 = opt.step(s1, x1, D)  # m = 0.5*[0.5,1] + [0.5,1] = [0.75, 1.5]
    np.testing.assert_allclose(s2["m"], [0.75, 1.5])
    np.testing.assert_allclose(x2, [2.25, 0.5])


@pytest.mark.parametrize(
    "opt, v_expected",
    [
        # v0 = tau^2 = 0.01; d^2 = [0.25, 1]
        (
            Adam(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1),
            [0.99 * 0.01 + 0.01 * 0.25, 0.99 * 0.01 + 0.01 * 1.0],
        ),
        (Adagrad(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1), [0.01 + 0.25, 0.01 + 1.0]),
        # sign(v - d^2) = -1 for both: v + (1-b2) d^2
        (Yogi(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1), [0.01 + 0.01 * 0.25, 0.01 + 0.01 * 1.0]),
    ],
)
def test_adaptive_first_step_by_hand(opt, v_expected):
    x, state = opt.step(opt.init(X), X, D)
    m = 0.1 * D  # (1 - beta1) * d
    np.testing.assert_allclose(state["m"], m)
    np.testing.assert_allclose(state["v"], v_expected)
    np.testing.assert_allclose(x, X + 0.1 * m / (np.sqrt(v_expected) + 0.1))


def test_yogi_shrinks_v_when_updates_get_small():
    opt = Yogi(lr=0.1, beta2=0.5, tau=1.0)  # v0 = 1 > d^2
    _, state = opt.step(opt.init(X), X, np.array([0.1, 0.1]))
    np.testing.assert_allclose(state["v"], 1.0 - 0.5 * 0.01)


def test_steps_do_not_mutate_inputs():
    opt = Adam()
    state = opt.init(X)
    x0, m0 = X.copy(), state["m"].copy()
    opt.step(state, X, D)
    np.testing.assert_array_equal(X, x0)
    np.testing.assert_array_equal(state["m"], m0)


def test_factory_defaults_and_errors():
    assert make_server_optimizer("sgd") == SGD(lr=1.0)
    assert make_server_optimizer("adam").lr == 0.01
    with pytest.raises(ConfigError, match=r"unknown server optimiser 'lion'; choose from adagrad"):
        make_server_optimizer("lion")


@pytest.mark.parametrize("lr", [1.0, 0.5, 2.0])
def test_sgd_step_equals_the_textbook_formula_bit_for_bit(lr):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1000).astype(np.float32)
    d = rng.standard_normal(1000).astype(np.float32)
    new, _ = SGD(lr=lr).step({}, x, d)
    assert new.dtype == np.float32
    assert np.array_equal(new, (x + lr * d).astype(np.float32))
