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
from safetensors.numpy import save as st_save

from consortia.core.errors import ModelFileError, SpecMismatchError
from consortia.core.spec import ModelSpec, model_digest

SPEC_KEY = "consortia.spec"
DIGEST_KEY = "consortia.digest"


def model_to_bytes(
    spec: ModelSpec, vector: np.ndarray, extra: dict[str, str] | None = None
) -> bytes:
    meta = {SPEC_KEY: spec.to_json(), DIGEST_KEY: model_digest(spec, vector), **(extra or {})}
    arrays = {k: np.ascontiguousarray(v) for k, v in spec.unflatten(vector).items()}
    return st_save(arrays, metadata=meta)


def save_model(path: str | os.PathLike[str], spec: ModelSpec, vector: np.ndarray) -> str:
    """Write atomically (temp file + rename) so a crash never leaves half a model; return digest."""
    path = Path(path)
    data = model_to_bytes(spec, vector)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return model_digest(spec, vector)


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
