"""Between the round protocol's typed messages and the wire's protobuf messages.

Vectors are cut into raw little-endian chunks on the way out (one chunk in memory at a
time) and written straight into a preallocated array on the way in, so neither side ever
holds a model twice or a whole model inside one protobuf message. Every decode step
checks what it reads and raises ``InvalidMessageError`` naming the problem; nothing here
unpickles or evaluates network data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from consortia.core.messages import (
    ClientPrivacy,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    InvalidMessageError,
    TrainSettings,
)
from consortia.fleet.grpc import federation_pb2 as pb

PROTOCOL_VERSION = 1
DEFAULT_CHUNK_BYTES = 2 * 2**20
MIN_CHUNK_BYTES = 1024
# Headroom above the chunk size for a message's non-vector fields (binding, metrics).
MESSAGE_OVERHEAD_BYTES = 256 * 2**10
MAX_METRICS = 256
MAX_NAME_CHARS = 128
MAX_REASON_CHARS = 2000
MAX_EXAMPLES = 2**53  # beyond this a float weight cannot represent the count exactly

_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_UINT64: np.dtype("<u8"),
}
_DTYPE_CODES: dict[str, pb.DType] = {
    "float16": pb.DTYPE_FLOAT16,
    "float32": pb.DTYPE_FLOAT32,
    "float64": pb.DTYPE_FLOAT64,
    "uint64": pb.DTYPE_UINT64,
}
PHASE_NAMES: dict[int, str] = {pb.PHASE_FIT: "fit", pb.PHASE_EVALUATE: "evaluate"}


def phase_of(message: Any) -> pb.Phase:
    """The wire phase of a server-side request; anything else cannot be sent."""
    if isinstance(message, FitIns):
        return pb.PHASE_FIT
    if isinstance(message, EvaluateIns):
        return pb.PHASE_EVALUATE
    raise InvalidMessageError(
        f"the gRPC fleet can send FitIns or EvaluateIns, not {type(message).__name__}"
    )


def wire_dtype(array: np.ndarray) -> np.dtype:
    """The little-endian dtype ``array`` travels as; only float vectors travel."""
    code = _DTYPE_CODES.get(np.dtype(array.dtype).name)
    if code is None:
        raise InvalidMessageError(
            f"vectors of dtype {array.dtype} cannot travel; use float16/32/64"
        )
    return _DTYPES[code]


def num_chunks(nbytes: int, chunk_bytes: int) -> int:
    return max(1, math.ceil(nbytes / chunk_bytes))


def vector_info(array: np.ndarray, chunk_bytes: int) -> pb.VectorInfo:
    if array.ndim != 1:
        raise InvalidMessageError(f"vectors travel flat (1-D), got shape {array.shape}")
    dt = wire_dtype(array)
    return pb.VectorInfo(
        length=array.shape[0],
        dtype=_DTYPE_CODES[dt.name],
        num_chunks=num_chunks(array.shape[0] * dt.itemsize, chunk_bytes),
    )


def iter_chunks(array: np.ndarray, request_id: int, chunk_bytes: int) -> Iterator[pb.Chunk]:
    """Yield the vector's bytes as Chunk messages, one ``chunk_bytes`` copy at a time."""
    le = np.ascontiguousarray(array, dtype=wire_dtype(array))  # no copy when already LE + C
    raw = le.view(np.uint8)
    for i in range(num_chunks(raw.size, chunk_bytes)):
        data = raw[i * chunk_bytes : (i + 1) * chunk_bytes].tobytes()
        yield pb.Chunk(request_id=request_id, index=i, data=data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_CHUNK_FIELD = 4  # ``chunk`` in both SiteMessage and ServerMessage


def chunk_frame(request_id: int, index: int, data: Any) -> bytes:
    """A serialized ``SiteMessage``/``ServerMessage`` holding one Chunk, written by hand.

    Why by hand: building a protobuf Chunk and its envelope and serializing them copies
    the data three times under the GIL, which was most of a round's server time with ten
    sites. This writes the same bytes protobuf would (proto3 omits zero fields; a test
    checks byte equality) with one copy of ``data``. Only for sending; receiving always
    goes through the protobuf parser.
    """
    head = b""
    if request_id:
        head += b"\x08" + _varint(request_id)
    if index:
        head += b"\x10" + _varint(index)
    n = len(data)
    body_head = b"\x1a" + _varint(n) if n else b""
    inner = len(head) + len(body_head) + n
    outer = bytes([(_CHUNK_FIELD << 3) | 2]) + _varint(inner)
    return b"".join((outer, head, body_head, data if n else b""))


def iter_chunk_frames(array: np.ndarray, request_id: int, chunk_bytes: int) -> Iterator[bytes]:
    """``iter_chunks`` already serialized as stream messages (see ``chunk_frame``)."""
    le = np.ascontiguousarray(array, dtype=wire_dtype(array))
    raw = memoryview(le.view(np.uint8).data)
    for i in range(num_chunks(len(raw), chunk_bytes)):
        yield chunk_frame(request_id, i, raw[i * chunk_bytes : (i + 1) * chunk_bytes])


def serialize_message(message: Any) -> bytes:
    """gRPC serializer for both directions: protobuf messages, or frames already encoded."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


class VectorAssembler:
    """Receives a vector's chunks in order into a preallocated array; checks every step.

    Memory is one array of exactly the announced size (which the caller has checked
    against what it expects or is willing to hold) plus the chunk being copied.
    """

    def __init__(
        self, info: pb.VectorInfo, request_id: int, max_chunk_bytes: int, max_bytes: int
    ) -> None:
        dt = _DTYPES.get(info.dtype)
        if dt is None:
            raise InvalidMessageError(f"unknown vector dtype code {info.dtype}")
        nbytes = info.length * dt.itemsize
        if nbytes > max_bytes:
            raise InvalidMessageError(
                f"vector of {info.length} {dt.name} values ({nbytes} bytes) exceeds the limit "
                f"of {max_bytes} bytes"
            )
        min_chunks = num_chunks(nbytes, max_chunk_bytes)
        if not min_chunks <= info.num_chunks <= max(1, nbytes):
            raise InvalidMessageError(
                f"{info.num_chunks} chunks cannot carry {nbytes} bytes "
                f"(at most {max_chunk_bytes} bytes per chunk)"
            )
        self.request_id = request_id
        self.array = np.empty(info.length, dtype=dt)
        self._raw = self.array.view(np.uint8)
        self._expected_chunks = info.num_chunks
        self._max_chunk = max_chunk_bytes
        self._next = 0
        self._filled = 0

    @property
    def complete(self) -> bool:
        return self._next == self._expected_chunks and self._filled == self._raw.size

    def add(self, chunk: pb.Chunk) -> bool:
        """Copy one chunk in; return True once the vector is complete."""
        if chunk.request_id != self.request_id:
            raise InvalidMessageError(
                f"chunk for request {chunk.request_id} while receiving request {self.request_id}"
            )
        if chunk.index != self._next:
            raise InvalidMessageError(f"chunk {chunk.index} arrived, expected chunk {self._next}")
        size = len(chunk.data)
        if size > self._max_chunk:
            raise InvalidMessageError(f"chunk of {size} bytes exceeds {self._max_chunk} bytes")
        end = self._filled + size
        if end > self._raw.size:
            raise InvalidMessageError(
                f"chunks carry more than the announced {self._raw.size} bytes"
            )
        self._raw[self._filled : end] = np.frombuffer(chunk.data, dtype=np.uint8)
        self._filled = end
        self._next += 1
        if self._next == self._expected_chunks and self._filled != self._raw.size:
            raise InvalidMessageError(
                f"all {self._expected_chunks} chunks arrived with {self._filled} of "
                f"{self._raw.size} bytes"
            )
        return self.complete

    def result(self) -> np.ndarray:
        """The vector in native byte order (a no-op view on little-endian machines)."""
        if not self.complete:
            raise InvalidMessageError("vector is incomplete")
        out = self.array.astype(self.array.dtype.newbyteorder("="), copy=False)
        if not np.isfinite(out).all():
            raise InvalidMessageError("vector holds NaN or infinite values")
        return out


@dataclass(frozen=True)
class Malformed:
    """Bytes from a site that are not a SiteMessage; refused by the session, not by gRPC."""

    error: str
    size: int


def decode_site_message(data: bytes) -> pb.SiteMessage | Malformed:
    """gRPC's request deserializer: never raises, so garbage cannot abort the stream
    with an anonymous error; the session refuses it with a reason and keeps serving."""
    try:
        return pb.SiteMessage.FromString(data)
    except DecodeError as exc:
        return Malformed(str(exc), len(data))


# ---- settings and metrics -------------------------------------------------------------


# The proto message mirrors TrainSettings field by field (``extra`` aside), so both
# directions copy by name: a field added to one but not the other fails loudly here
# instead of being dropped on the wire.
_SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSettings) if f.name != "extra")


def settings_to_pb(s: TrainSettings) -> pb.TrainSettings:
    extra: dict[str, pb.Scalar] = {}
    for k, v in s.extra.items():
        if isinstance(v, bool):
            extra[k] = pb.Scalar(flag=v)
        elif isinstance(v, (int, np.integer)):
            extra[k] = pb.Scalar(integer=int(v))
        elif isinstance(v, (float, np.floating)):
            extra[k] = pb.Scalar(number=float(v))
        elif isinstance(v, str):
            extra[k] = pb.Scalar(text=v)
        else:
            raise InvalidMessageError(
                f"TrainSettings.extra[{k!r}] is a {type(v).__name__}; only bool, int, float "
                "and str travel to sites"
            )
    return pb.TrainSettings(extra=extra, **{n: getattr(s, n) for n in _SETTING_FIELDS})


def _scalar(v: pb.Scalar) -> bool | int | float | str:
    kind = v.WhichOneof("value")
    if kind is None:
        raise InvalidMessageError("empty setting value")
    value: bool | int | float | str = getattr(v, kind)
    return value


def settings_from_pb(s: pb.TrainSettings) -> TrainSettings:
    values = {n: getattr(s, n) for n in _SETTING_FIELDS}
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidMessageError(f"training setting {name} is not finite")
    return TrainSettings(extra={k: _scalar(v) for k, v in s.extra.items()}, **values)


def privacy_to_pb(p: ClientPrivacy) -> pb.ClientPrivacy:
    out = pb.ClientPrivacy(
        mode=p.mode,
        clip_norm=p.clip_norm,
        noise_multiplier=p.noise_multiplier,
        sample_rate=p.sample_rate,
        delta=p.delta,
        scale=p.scale,
        bits=p.bits,
        min_sites=p.min_sites,
    )
    if p.noise_seed is not None:
        out.noise_seed = p.noise_seed
    return out


def privacy_from_pb(p: pb.ClientPrivacy) -> ClientPrivacy:
    if p.mode not in ("central", "distributed"):
        raise InvalidMessageError(f"unknown privacy mode {p.mode!r}")
    for name in ("clip_norm", "noise_multiplier", "sample_rate", "delta", "scale"):
        value = getattr(p, name)
        if not (math.isfinite(value) and value >= 0):
            raise InvalidMessageError(f"privacy setting {name} must be finite and >= 0")
    if p.bits > 62:
        raise InvalidMessageError(f"privacy bits {p.bits} exceed 62")
    seed = p.noise_seed if p.HasField("noise_seed") else None
    return ClientPrivacy(
        p.mode,
        p.clip_norm,
        p.noise_multiplier,
        p.sample_rate,
        p.delta,
        p.scale,
        p.bits,
        p.min_sites,
        seed,
    )


def update_dtype(message: FitIns) -> np.dtype:
    """The dtype a site's update must arrive in: the model's, or uint64 under distributed DP."""
    if message.privacy is not None and message.privacy.mode == "distributed":
        return np.dtype(np.uint64)
    return np.dtype(message.weights.dtype)


def metrics_to_pb(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items()}


def metrics_from_pb(metrics: Mapping[str, float]) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise InvalidMessageError(f"{len(metrics)} metrics exceed the limit of {MAX_METRICS}")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not k or len(k) > MAX_NAME_CHARS:
            raise InvalidMessageError(f"metric name of {len(k)} characters is not allowed")
        if not math.isfinite(v):
            raise InvalidMessageError(f"metric {k!r} is not finite ({v})")
        out[k] = float(v)
    return out


def num_examples_from_pb(n: int) -> int:
    if n > MAX_EXAMPLES:
        raise InvalidMessageError(f"num_examples {n} is implausibly large")
    return int(n)


# ---- requests (server -> site) ----------------------------------------------------------


def request_to_pb(
    message: FitIns | EvaluateIns, job_id: str, request_id: int, chunk_bytes: int
) -> pb.Request:
    binding = pb.Binding(
        job_id=job_id, round=message.round, phase=phase_of(message), request_id=request_id
    )
    vector = vector_info(message.weights, chunk_bytes)
    if isinstance(message, FitIns):
        if message.seed < 0:
            raise InvalidMessageError(f"seed must be non-negative, got {message.seed}")
        fit = pb.FitInstruction(settings=settings_to_pb(message.settings), seed=message.seed)
        if message.privacy is not None:
            fit.privacy.CopyFrom(privacy_to_pb(message.privacy))
        return pb.Request(binding=binding, vector=vector, fit=fit)
    return pb.Request(binding=binding, vector=vector, evaluate=pb.EvaluateInstruction())


def request_from_pb(req: pb.Request, weights: np.ndarray) -> FitIns | EvaluateIns:
    """Build the site-side message once the weights are assembled; body must match phase."""
    body = req.WhichOneof("body")
    phase = req.binding.phase
    if phase == pb.PHASE_FIT and body == "fit":
        privacy = privacy_from_pb(req.fit.privacy) if req.fit.HasField("privacy") else None
        settings = settings_from_pb(req.fit.settings)
        return FitIns(req.binding.round, weights, settings, req.fit.seed, privacy)
    if phase == pb.PHASE_EVALUATE and body == "evaluate":
        return EvaluateIns(req.binding.round, weights)
    raise InvalidMessageError(f"request body {body!r} does not fit phase {phase}")


# ---- replies (site -> server) -----------------------------------------------------------


def reply_to_pb(
    result: FitRes | EvaluateRes, binding: pb.Binding, chunk_bytes: int
) -> tuple[pb.Reply, np.ndarray | None]:
    """The reply header, and the vector that must follow it in chunks (fit only)."""
    if isinstance(result, FitRes) and binding.phase == pb.PHASE_FIT:
        delta = np.asarray(result.delta)
        fit = pb.FitResult(num_examples=result.num_examples, metrics=metrics_to_pb(result.metrics))
        if result.clip_bit is not None:
            fit.clip_bit = result.clip_bit
        return pb.Reply(binding=binding, vector=vector_info(delta, chunk_bytes), fit=fit), delta
    if isinstance(result, EvaluateRes) and binding.phase == pb.PHASE_EVALUATE:
        ev = pb.EvaluateResult(
            num_examples=result.num_examples, metrics=metrics_to_pb(result.metrics)
        )
        return pb.Reply(binding=binding, evaluate=ev), None
    raise InvalidMessageError(
        f"site answered a {PHASE_NAMES.get(binding.phase, '?')} request with "
        f"{type(result).__name__}"
    )


def error_reply(binding: pb.Binding, reason: str) -> pb.Reply:
    return pb.Reply(binding=binding, error=pb.SiteError(reason=reason[:MAX_REASON_CHARS]))
