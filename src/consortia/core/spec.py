"""ModelSpec: the names, shapes and dtypes that give meaning to one flat parameter vector.

Everything between the framework adapters (clipping, noise, aggregation, server
optimisers, serialisation, hashing) works on a single 1-D array; the spec is the one
place that remembers how that array maps back onto a model's tensors.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import numpy as np

from consortia.core.errors import SpecMismatchError

_ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)


@dataclass(frozen=True)
class Entry:
    """One named tensor of a model."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(prod(self.shape))


@dataclass(frozen=True)
class ModelSpec:
    """Ordered tensor entries plus the dtype of the flat vector that carries them all."""

    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise SpecMismatchError(f"duplicate tensor names in spec: {names}")
        for e in self.entries:
            if e.dtype not in _ALLOWED_DTYPES:
                raise SpecMismatchError(f"tensor {e.name!r}: unsupported dtype {e.dtype!r}")
            if any(d < 0 for d in e.shape):
                raise SpecMismatchError(f"tensor {e.name!r}: negative dimension in {e.shape}")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ModelSpec:
        return cls(
            tuple(Entry(k, tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in arrays.items())
        )

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def size(self) -> int:
        """Number of scalars in the flat vector."""
        return sum(e.size for e in self.entries)

    @property
    def vector_dtype(self) -> np.dtype:
        """float64 only when a tensor needs it; float32 otherwise (ints ride along as floats)."""
        if any(e.dtype == "float64" for e in self.entries):
            return np.dtype(np.float64)
        return np.dtype(np.float32)

    def offsets(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for e in self.entries:
            out.append((start, start + e.size))
            start += e.size
        return out

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the named arrays in spec order into one new vector."""
        missing = [n for n in self.names if n not in arrays]
        extra = [n for n in arrays if n not in set(self.names)]
        if missing or extra:
            raise SpecMismatchError(
                f"arrays do not match spec: missing {missing}, unexpected {extra}"
            )
        out = np.empty(self.size, dtype=self.vector_dtype)
        for e, (a, b) in zip(self.entries, self.offsets(), strict=True):
            arr = np.asarray(arrays[e.name])
            if tuple(arr.shape) != e.shape:
                raise SpecMismatchError(
                    f"tensor {e.name!r}: shape {tuple(arr.shape)} does not match spec {e.shape}"
                )
            out[a:b] = arr.reshape(-1)
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a vector back into named arrays of the spec's shapes and dtypes."""
        self.check_vector(vector)
        out: dict[str, np.ndarray] = {}
        for e, (a, b) in zip(self.entries, self.offsets(), strict=True):
            part = vector[a:b].reshape(e.shape)
            if np.issubdtype(np.dtype(e.dtype), np.integer) or e.dtype == "bool":
                part = np.rint(part)
            out[e.name] = part.astype(e.dtype, copy=True)
        return out

    def views(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Named read-only views into ``vector`` (converted copies only for tensors stored
        in another dtype): for readers such as evaluation and checkpoints, which must not
        pay a model-sized copy, nor be able to change the model they were shown."""
        self.check_vector(vector)
        out: dict[str, np.ndarray] = {}
        for e, (a, b) in zip(self.entries, self.offsets(), strict=True):
            part = vector[a:b].reshape(e.shape)
            if part.dtype != np.dtype(e.dtype):
                if np.issubdtype(np.dtype(e.dtype), np.integer) or e.dtype == "bool":
                    part = np.rint(part)
                part = part.astype(e.dtype)
            part = part.view()
            part.flags.writeable = False
            out[e.name] = part
        return out

    def check_vector(self, vector: np.ndarray) -> None:
        if not isinstance(vector, np.ndarray) or vector.ndim != 1:
            raise SpecMismatchError("a model vector must be a 1-D numpy array")
        if vector.shape[0] != self.size:
            raise SpecMismatchError(
                f"vector has {vector.shape[0]} values but the spec needs {self.size}"
            )

    def to_json(self) -> str:
        return json.dumps(
            [[e.name, list(e.shape), e.dtype] for e in self.entries], separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            raw = json.loads(text)
            return cls(tuple(Entry(str(n), tuple(int(d) for d in s), str(t)) for n, s, t in raw))
        except (ValueError, TypeError) as exc:
            raise SpecMismatchError(f"malformed model spec: {exc}") from exc

    def digest(self) -> str:
        """Stable SHA-256 of the spec, so two parties can check they mean the same model."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def model_digest(spec: ModelSpec, vector: np.ndarray) -> str:
    """SHA-256 over the spec and the vector's little-endian bytes: one model, one name."""
    spec.check_vector(vector)
    h = hashlib.sha256(spec.digest().encode())
    h.update(byte_view(np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<"))))
    return h.hexdigest()


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array without copying them (``tobytes`` would copy)."""
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


_FINITE_CHUNK = 1 << 20
# Arrays a transport checked value by value as they arrived (``vouch_finite``).
_VOUCHED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def vouch_finite(array: np.ndarray) -> None:
    """Record that every value of ``array`` was found finite as it arrived, and make it
    read-only so that it stays so.

    Why: the gRPC server checks each chunk of an update while the bytes are in cache, and
    the reply's own checks (``all_finite``) then read the whole update from memory again,
    on the thread that aggregates; with ten 40 MB updates that second pass was about
    50 ms at the end of every round. ``all_finite`` trusts the mark only while the array
    is still read-only, so making it writable again voids it.
    """
    array.flags.writeable = False
    _VOUCHED[id(array)] = array


def all_finite(vector: np.ndarray) -> bool:
    """Whether every value is finite, checked in chunks: ``np.isfinite(v).all()`` would
    allocate a mask of a quarter of a float32 model for a yes or no."""
    if _VOUCHED.get(id(vector)) is vector and not vector.flags.writeable:
        return True
    flat = vector.reshape(-1)
    return all(
        bool(np.isfinite(flat[i : i + _FINITE_CHUNK]).all())
        for i in range(0, flat.size, _FINITE_CHUNK)
    )
