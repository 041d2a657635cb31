import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortia.core.errors import SpecMismatchError
from consortia.core.spec import ModelSpec, model_digest


def _arrays() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([0.5, -1.5], dtype=np.float32),
        "steps": np.array(7, dtype=np.int64),
    }


def test_flatten_orders_by_spec_and_round_trips_dtypes():
    arrays = _arrays()
    spec = ModelSpec.from_arrays(arrays)
    vec = spec.flatten(arrays)
    assert vec.dtype == np.float32 and vec.shape == (9,)
    np.testing.assert_array_equal(vec, [0, 1, 2, 3, 4, 5, 0.5, -1.5, 7])
    back = spec.unflatten(vec)
    assert list(back) == ["w", "b", "steps"]
    assert back["steps"].dtype == np.int64 and back["steps"] == 7
    np.testing.assert_array_equal(back["w"], arrays["w"])


def test_float64_entries_make_a_float64_vector():
    spec = ModelSpec.from_arrays({"a": np.zeros(2, np.float64), "b": np.zeros(1, np.float32)})
    assert spec.vector_dtype == np.float64


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2), "steps": np.array(1)}, "shape"),
        ({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2)}, "missing"),
    ],
)
def test_flatten_refuses_mismatched_arrays(arrays, message):
    spec = ModelSpec.from_arrays(_arrays())
    with pytest.raises(SpecMismatchError, match=message):
        spec.flatten(arrays)


def test_unflatten_refuses_wrong_length():
    spec = ModelSpec.from_arrays(_arrays())
    with pytest.raises(SpecMismatchError, match="9"):
        spec.unflatten(np.zeros(8, np.float32))


def test_spec_json_and_digest_are_stable():
    spec = ModelSpec.from_arrays(_arrays())
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.digest() == spec.digest()
    other = ModelSpec.from_arrays({**_arrays(), "extra": np.zeros(1, np.float32)})
    assert other.digest() != spec.digest()


def test_model_digest_changes_with_any_value():
    arrays = _arrays()
    spec = ModelSpec.from_arrays(arrays)
    vec = spec.flatten(arrays)
    d = model_digest(spec, vec)
    vec2 = vec.copy()
    vec2[3] = np.nextafter(vec2[3], np.float32(10))
    assert model_digest(spec, vec2) != d
    assert model_digest(spec, vec.copy()) == d


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=5))
def test_round_trip_any_shapes(shapes):
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    spec = ModelSpec.from_arrays(arrays)
    back = spec.unflatten(spec.flatten(arrays))
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)


def test_views_share_the_vector_and_cannot_change_it():
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.arange(2, dtype=np.int64)}
    spec = ModelSpec.from_arrays(arrays)
    vec = spec.flatten(arrays)
    views = spec.views(vec)
    assert np.shares_memory(views["w"], vec)  # no copy of the float tensor
    assert views["n"].dtype == np.int64 and np.array_equal(views["n"], [0, 1])
    with pytest.raises(ValueError, match="read-only"):
        views["w"][0, 0] = 5.0
    assert vec[0] == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_in_any_chunk(bad):
    from consortia.core.spec import all_finite

    v = np.zeros(3_000_001, np.float32)
    assert all_finite(v)
    for i in (0, 1_048_576, 3_000_000):
        w = v.copy()
        w[i] = bad
        assert not all_finite(w)


def test_a_vouched_array_is_trusted_only_while_it_stays_read_only(monkeypatch):
    from consortia.core import spec

    v = np.ones(3_000_001, np.float32)
    spec.vouch_finite(v)
    assert not v.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        v[5] = np.nan
    # Trusted without reading it: the finiteness check is not even called.
    monkeypatch.setattr(spec.np, "isfinite", lambda *_a, **_k: pytest.fail("re-read"))
    assert spec.all_finite(v)
    monkeypatch.undo()
    # Made writable again, the mark no longer counts: a NaN written now is found.
    v.flags.writeable = True
    v[5] = np.nan
    assert not spec.all_finite(v)
    # An equal array that was never vouched for is checked as usual.
    w = np.ones(3, np.float32)
    w[1] = np.inf
    assert not spec.all_finite(w)
