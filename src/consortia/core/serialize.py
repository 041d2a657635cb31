"""Model files: safetensors carrying the spec and a digest, never pickle.

The tensors are stored under their own names and dtypes, so that the file also opens in
any safetensors reader (``safetensors.torch.load_file`` gives a ready state_dict).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from consortia.core.errors import ModelFileError, SpecMismatchError
from consortia.core.spec import ModelSpec, byte_view, model_digest

SPEC_KEY = "consortia.spec"
DIGEST_KEY = "consortia.digest"


_ST_DTYPES = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "bool": "BOOL",
}


def model_chunks(
    spec: ModelSpec, vector: np.ndarray, digest: str | None = None
) -> list[bytes | memoryview]:
    """A model file as the byte chunks to write in order: the safetensors header, then each
    tensor's bytes as a view into ``vector`` (converted copies only for tensors stored in
    another dtype).

    Written here rather than by ``safetensors.numpy.save``, which builds the whole file in
    memory from a copy of every tensor: two extra model copies at every checkpoint, which
    for a large model is most of the server's peak memory. The layout is the format's
    (little-endian u64 header length, JSON header padded with spaces to 8 bytes, tensors
    back to back); the tests read the result with the safetensors library.
    """
    digest = digest or model_digest(spec, vector)
    header: dict[str, object] = {"__metadata__": {SPEC_KEY: spec.to_json(), DIGEST_KEY: digest}}
    tensors: list[bytes | memoryview] = []
    offset = 0
    for name, view in spec.views(vector).items():
        data = byte_view(np.ascontiguousarray(view, dtype=view.dtype.newbyteorder("<")))
        header[name] = {
            "dtype": _ST_DTYPES[view.dtype.name],
            "shape": list(view.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        tensors.append(data)
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)), text, *tensors]


def model_to_bytes(spec: ModelSpec, vector: np.ndarray) -> bytes:
    return b"".join(model_chunks(spec, vector))


def save_model(path: str | os.PathLike[str], spec: ModelSpec, vector: np.ndarray) -> str:
    """Write atomically (temp file + rename) so a crash never leaves half a model; return digest."""
    path = Path(path)
    digest = model_digest(spec, vector)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for chunk in model_chunks(spec, vector, digest):
            f.write(chunk)
    os.replace(tmp, path)
    return digest


def _header_metadata(data: bytes, origin: str) -> dict[str, str]:
    if len(data) < 8:
        raise ModelFileError(f"{origin}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100 * 2**20:
        raise ModelFileError(f"{origin}: header length {n} is impossible for {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise ModelFileError(f"{origin}: header is not valid JSON ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def model_from_bytes(
    data: bytes, expected: ModelSpec | None = None, origin: str = "<bytes>"
) -> tuple[ModelSpec, np.ndarray]:
    """Parse, check against the stored digest (and the expected spec), return (spec, vector)."""
    meta = _header_metadata(data, origin)
    if SPEC_KEY not in meta or DIGEST_KEY not in meta:
        raise ModelFileError(f"{origin}: not a consortia model file (no spec/digest metadata)")
    try:
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    except SpecMismatchError as exc:
        raise ModelFileError(f"{origin}: {exc}") from exc
    try:
        arrays = st_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ModelFileError(f"{origin}: malformed tensor data ({exc})") from exc
    try:
        vector = spec.flatten(arrays)
    except SpecMismatchError as exc:
        raise ModelFileError(f"{origin}: tensors do not match the stored spec: {exc}") from exc
    if model_digest(spec, vector) != meta[DIGEST_KEY]:
        raise ModelFileError(f"{origin}: digest mismatch: the file was modified or corrupted")
    if expected is not None and spec.digest() != expected.digest():
        raise ModelFileError(f"{origin}: the file holds a different model than expected")
    return spec, vector


def load_model(
    path: str | os.PathLike[str], expected: ModelSpec | None = None
) -> tuple[ModelSpec, np.ndarray]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror})") from exc
    return model_from_bytes(data, expected, origin=str(path))
