import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.preprocessing import StandardScaler

from consortia.client.trainers.sklearn import LinearModel, SklearnTrainer
from consortia.core.errors import ConfigError
from consortia.core.messages import TrainSettings


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x), y


def test_spec_and_vector_round_trip_through_the_estimator():
    model = LinearModel(SGDClassifier(loss="log_loss"), n_features=3, classes=np.array([0, 1, 2]))
    spec = model.spec
    assert spec.names == ["coef", "intercept"] and spec.size == 3 * 3 + 3
    vec = np.arange(spec.size, dtype=np.float64)
    est = model.fitted(vec)
    np.testing.assert_array_equal(est.coef_, vec[:9].reshape(3, 3))
    np.testing.assert_array_equal(est.intercept_, vec[9:])
    trainer = SklearnTrainer(lambda: model)
    assert np.array_equal(trainer.initial()[1], np.zeros(12))


@pytest.mark.parametrize(
    "est", [SGDClassifier(loss="log_loss", random_state=0), LogisticRegression()]
)
def test_fit_learns_from_the_global_weights(data, est):
    x, y = data
    trainer = SklearnTrainer(lambda: LinearModel(est, n_features=30, classes=np.array([0, 1])))
    _, w0 = trainer.initial()
    w1, m = trainer.fit(w0, x, y, TrainSettings(local_epochs=5), seed=0)
    assert m["accuracy"] > 0.9
    assert trainer.evaluate(w1, x, y)["accuracy"] > trainer.evaluate(w0, x, y)["accuracy"]


def test_sgd_site_with_one_class_still_trains(data):
    x, y = data
    only = y == 1
    trainer = SklearnTrainer(
        lambda: LinearModel(SGDClassifier(loss="log_loss"), n_features=30, classes=np.array([0, 1]))
    )
    _, w0 = trainer.initial()
    w1, _ = trainer.fit(w0, x[only], y[only], TrainSettings(), seed=0)
    assert not np.array_equal(w0, w1)


def test_bad_factory_is_named():
    with pytest.raises(ConfigError, match="LinearModel"):
        SklearnTrainer(lambda: SGDClassifier()).initial()


def test_logistic_regression_learns_from_a_site_holding_a_few_of_the_classes() -> None:
    """A site with labels {0, 1} of the job's {0, 1, 2} continues from the global model;
    its missing class enters with weight 0, so the fit is the one on its own rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4))
    y = (x[:, 0] > 0).astype(np.int64)  # classes 0 and 1 only
    model = LinearModel(LogisticRegression(), n_features=4, classes=np.array([0, 1, 2]))
    trainer = SklearnTrainer(lambda: model)
    _, w = trainer.initial()
    new, metrics = trainer.fit(w, x, y, TrainSettings(local_epochs=50), seed=0)
    assert new.shape == w.shape and np.isfinite(new).all() and metrics["accuracy"] > 0.9
    only_zero = trainer.fit(w, x[y == 0], y[y == 0], TrainSettings(local_epochs=5), seed=0)[0]
    assert only_zero.shape == w.shape  # one class alone is no longer refused
