import numpy as np
import pytest

from consortia.core.errors import ModelFileError
from consortia.core.serialize import load_model, model_from_bytes, model_to_bytes, save_model
from consortia.core.spec import ModelSpec, model_digest


@pytest.fixture
def model():
    arrays = {
        "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "b": np.ones(3, np.float32),
    }
    spec = ModelSpec.from_arrays(arrays)
    return spec, spec.flatten(arrays)


def test_save_and_load_round_trip(tmp_path, model):
    spec, vec = model
    digest = save_model(tmp_path / "m.safetensors", spec, vec)
    spec2, vec2 = load_model(tmp_path / "m.safetensors", expected=spec)
    assert spec2 == spec and digest == model_digest(spec, vec)
    np.testing.assert_array_equal(vec2, vec)


def test_file_opens_as_plain_safetensors_with_original_names(tmp_path, model):
    from safetensors.numpy import load_file

    spec, vec = model
    save_model(tmp_path / "m.safetensors", spec, vec)
    assert sorted(load_file(tmp_path / "m.safetensors")) == ["b", "w"]


def test_tampered_value_is_refused(tmp_path, model):
    spec, vec = model
    path = tmp_path / "m.safetensors"
    save_model(path, spec, vec)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit in the last tensor value
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="digest mismatch"):
        load_model(path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (b"\xff" * 8 + b"{}", "impossible"),
        ((5).to_bytes(8, "little") + b"nope!", "not valid JSON"),
        ((2).to_bytes(8, "little") + b"{}", "not a consortia model file"),
    ],
)
def test_malformed_bytes_are_refused(data, message):
    with pytest.raises(ModelFileError, match=message):
        model_from_bytes(data)


def test_truncated_file_is_refused(model):
    spec, vec = model
    data = model_to_bytes(spec, vec)
    with pytest.raises(ModelFileError):
        model_from_bytes(data[:-5])


def test_file_for_another_model_is_refused(tmp_path, model):
    spec, vec = model
    save_model(tmp_path / "m.safetensors", spec, vec)
    other = ModelSpec.from_arrays({"w": np.zeros((3, 4), np.float32)})
    with pytest.raises(ModelFileError, match="different model"):
        load_model(tmp_path / "m.safetensors", expected=other)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothing\.safetensors"):
        load_model(tmp_path / "nothing.safetensors")


def test_streamed_file_equals_the_safetensors_library_tensor_for_tensor(tmp_path):
    """The checkpoint writer streams views of the vector (no in-memory file); what it
    writes must still be a safetensors file any reader opens, with every dtype kept."""
    from safetensors.numpy import load_file

    from consortia.core.serialize import model_chunks

    arrays = {
        "a": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b": np.linspace(0, 1, 5, dtype=np.float32),
        "c": np.array([True, False, True]),
        "d": np.arange(4, dtype=np.uint8),
    }
    spec = ModelSpec.from_arrays(arrays)
    vec = spec.flatten(arrays)
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as f:
        for chunk in model_chunks(spec, vec):
            f.write(chunk)
    loaded = load_file(path)
    assert set(loaded) == set(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and np.array_equal(loaded[name], arr)
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % 8 == 0  # header padded
    _, vec2 = load_model(path, expected=spec)
    np.testing.assert_array_equal(vec2, vec)


def test_durable_write_of_chunks_returns_the_files_digest(tmp_path, model):
    import hashlib

    from consortia.core.serialize import model_chunks
    from consortia.server.store import write_durably

    spec, vec = model
    path = tmp_path / "m.safetensors"
    sha = write_durably(path, model_chunks(spec, vec))
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.read_bytes() == model_to_bytes(spec, vec)
