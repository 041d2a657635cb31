"""Between message payloads (named arrays and scalars) and the wire's protobuf messages.

One generic encoding serves every message kind. Arrays are cut into raw little-endian
chunks on the way out (one chunk in memory at a time) and written straight into
preallocated arrays on the way in, so neither side ever holds a model twice or a whole
model inside one protobuf message. Every decode step checks what it reads (counts, names,
sizes announced before anything is allocated, order, finite values) and raises
``InvalidMessageError`` naming the problem; nothing here unpickles or evaluates network
data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from consortia.core.payload import InvalidMessageError, Payload, Scalar
from consortia.fleet.grpc import federation_pb2 as pb

PROTOCOL_VERSION = 2
DEFAULT_CHUNK_BYTES = 2 * 2**20
MIN_CHUNK_BYTES = 1024
# Headroom above the chunk size for a message's non-vector fields (binding, metrics).
MESSAGE_OVERHEAD_BYTES = 256 * 2**10
MAX_SCALARS = 1024
MAX_ARRAYS = 64
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 4096
MAX_REASON_CHARS = 2000
# The Welcome is the job's join request: a site answers it with a ``join`` reply bound to
# this request id, which the server never gives a request of its own (they count from 1).
WELCOME_REQUEST_ID = 0

_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_UINT64: np.dtype("<u8"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT32: np.dtype("<i4"),
}
_DTYPE_CODES: dict[str, pb.DType] = {
    "float16": pb.DTYPE_FLOAT16,
    "float32": pb.DTYPE_FLOAT32,
    "float64": pb.DTYPE_FLOAT64,
    "uint64": pb.DTYPE_UINT64,
    "int64": pb.DTYPE_INT64,
    "uint8": pb.DTYPE_UINT8,
    "int32": pb.DTYPE_INT32,
}


def wire_dtype(array: np.ndarray) -> np.dtype:
    """The little-endian dtype ``array`` travels as; only float vectors travel."""
    code = _DTYPE_CODES.get(np.dtype(array.dtype).name)
    if code is None:
        raise InvalidMessageError(
            f"arrays of dtype {array.dtype} cannot travel; use one of {', '.join(_DTYPE_CODES)}"
        )
    return _DTYPES[code]


def num_chunks(nbytes: int, chunk_bytes: int) -> int:
    return max(1, math.ceil(nbytes / chunk_bytes))


def array_info(name: str, array: np.ndarray, chunk_bytes: int) -> pb.ArrayInfo:
    if array.ndim != 1:
        raise InvalidMessageError(f"{name}: arrays travel flat (1-D), got shape {array.shape}")
    dt = wire_dtype(array)
    return pb.ArrayInfo(
        name=name,
        length=array.shape[0],
        dtype=_DTYPE_CODES[dt.name],
        num_chunks=num_chunks(array.shape[0] * dt.itemsize, chunk_bytes),
    )


def dtype_code(dtype: np.dtype) -> int:
    code = _DTYPE_CODES.get(np.dtype(dtype).name)
    if code is None:
        raise InvalidMessageError(f"arrays of dtype {dtype} cannot travel")
    return int(code)


def dtype_of(code: int) -> np.dtype:
    dt = _DTYPES.get(code)
    if dt is None:
        raise InvalidMessageError(f"unknown array dtype code {code}")
    return dt


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
    checks byte equality) with one copy of ``data``. ``parse_chunk_frame`` reads it back.
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


def iter_chunk_frames(
    array: np.ndarray, request_id: int, chunk_bytes: int, first_index: int = 0
) -> Iterator[bytes]:
    """An array's bytes as serialized stream messages holding one Chunk each (see
    ``chunk_frame``), numbered from ``first_index``; one ``chunk_bytes`` slice at a time."""
    le = np.ascontiguousarray(array, dtype=wire_dtype(array))  # no copy when already LE + C
    raw = memoryview(le.view(np.uint8).data)
    for i in range(num_chunks(len(raw), chunk_bytes)):
        yield chunk_frame(request_id, first_index + i, raw[i * chunk_bytes : (i + 1) * chunk_bytes])


def iter_payload_frames(
    arrays: list[np.ndarray], request_id: int, chunk_bytes: int
) -> Iterator[bytes]:
    """Every array's chunks, in announcement order, with one running index."""
    index = 0
    for array in arrays:
        for frame in iter_chunk_frames(array, request_id, chunk_bytes, index):
            index += 1
            yield frame


# ---- receiving chunk frames without protobuf --------------------------------------------

_CHUNK_TAG = (_CHUNK_FIELD << 3) | 2  # 0x22 in both envelopes
_REQUEST_ID_TAG, _INDEX_TAG, _DATA_TAG = 0x08, 0x10, 0x1A  # Chunk fields 1-3
_UINT64_END = 2**64
_UINT32_END = 2**32


@dataclass(frozen=True, slots=True)
class ChunkFrame:
    """A received Chunk whose ``data`` is a view into the bytes gRPC handed over, not a copy.

    Why: parsing a 2 MiB chunk with protobuf copies its data twice (into the parsed message,
    then into a new ``bytes`` when ``.data`` is read) before the assembler copies it a third
    time; with ten sites sending at once those two copies were about 8% of the server's CPU
    in a round (profiled), and a round is CPU-bound. Chunks that protobuf parses (valid but
    non-canonical encodings) become a ChunkFrame too, so receivers handle one chunk type.
    """

    request_id: int
    index: int
    data: memoryview


def chunk_from_pb(chunk: pb.Chunk) -> ChunkFrame:
    return ChunkFrame(chunk.request_id, chunk.index, memoryview(chunk.data))


def _canonical_varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and the position after it; None unless it is complete, at most
    10 bytes and in shortest form (the form protobuf writes). Values are range-checked by
    the caller."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + 10)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > pos:  # a padded varint: valid protobuf, not ours
                return None
            return value, i + 1
        shift += 7
    return None


def _field(buf: bytes, pos: int, tag: int, end_value: int) -> tuple[int, int] | None:
    """Field ``tag`` at ``pos`` holding a varint in ``1 .. end_value - 1`` (proto3 omits
    zero), and the position after it; None if absent or anything else."""
    if pos >= len(buf) or buf[pos] != tag:
        return None
    got = _canonical_varint(buf, pos + 1)
    if got is None or not 0 < got[0] < end_value:
        return None
    return got


def parse_chunk_frame(buf: bytes) -> ChunkFrame | None:
    """Recognise a SiteMessage/ServerMessage holding exactly one Chunk written the way
    ``chunk_frame`` (and protobuf) writes it; None for anything else, which the caller
    then gives to the protobuf parser.

    Every byte is from the peer, so this accepts only the one canonical layout, checked
    byte for byte: the envelope's single field 4 whose length is exactly the rest of the
    message, then request_id, index and data, each present only if non-zero, in field
    order, in shortest-form varints within their types' ranges, data's length exactly
    the rest. Any byte string it accepts, protobuf parses to the same chunk (a test
    checks this on valid, mutated and random frames).
    """
    outer = _field(buf, 0, _CHUNK_TAG, len(buf))
    if outer is None or outer[0] != len(buf) - outer[1]:
        return None
    pos, request_id, index = outer[1], 0, 0
    if (got := _field(buf, pos, _REQUEST_ID_TAG, _UINT64_END)) is not None:
        request_id, pos = got
    if (got := _field(buf, pos, _INDEX_TAG, _UINT32_END)) is not None:
        index, pos = got
    if pos == len(buf):
        return ChunkFrame(request_id, index, memoryview(b""))
    data = _field(buf, pos, _DATA_TAG, len(buf))
    if data is None or data[0] != len(buf) - data[1]:
        return None
    return ChunkFrame(request_id, index, memoryview(buf)[data[1] :])


def serialize_message(message: Any) -> bytes:
    """gRPC serializer for both directions: protobuf messages, or frames already encoded."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


# Makes an uninitialised 1-D array (length, dtype): ``np.empty``, or a ``BufferPool``'s.
Allocate = Callable[[int, np.dtype], np.ndarray]


class VectorAssembler:
    """Receives one array's chunks in order into a preallocated array; checks every step.

    Memory is one array of exactly the announced size (which the caller has checked
    against what it expects or is willing to hold) plus the chunk being copied.
    """

    def __init__(
        self,
        info: pb.ArrayInfo,
        request_id: int,
        max_chunk_bytes: int,
        max_bytes: int,
        first_index: int = 0,
        alloc: Allocate = np.empty,
    ) -> None:
        dt = dtype_of(info.dtype)
        nbytes = info.length * dt.itemsize
        if nbytes > max_bytes:
            raise InvalidMessageError(
                f"array {info.name[:64]!r} of {info.length} {dt.name} values ({nbytes} bytes) "
                f"exceeds the limit of {max_bytes} bytes"
            )
        min_chunks = num_chunks(nbytes, max_chunk_bytes)
        if not min_chunks <= info.num_chunks <= max(1, nbytes):
            raise InvalidMessageError(
                f"{info.num_chunks} chunks cannot carry {nbytes} bytes "
                f"(at most {max_chunk_bytes} bytes per chunk)"
            )
        self.request_id = request_id
        self.array = alloc(info.length, dt)
        self._raw = self.array.view(np.uint8)
        self._expected_chunks = info.num_chunks
        self._max_chunk = max_chunk_bytes
        self._first = first_index
        self._next = 0
        self._filled = 0
        self._checked = 0  # elements known to be finite

    @property
    def complete(self) -> bool:
        return self._next == self._expected_chunks and self._filled == self._raw.size

    def add(self, chunk: ChunkFrame | pb.Chunk) -> bool:
        """Copy one chunk in; return True once the vector is complete."""
        if chunk.request_id != self.request_id:
            raise InvalidMessageError(
                f"chunk for request {chunk.request_id} while receiving request {self.request_id}"
            )
        if chunk.index != self._first + self._next:
            raise InvalidMessageError(
                f"chunk {chunk.index} arrived, expected chunk {self._first + self._next}"
            )
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
        self._check_finite()
        return self.complete

    def _check_finite(self) -> None:
        """Refuse NaN and infinities in the elements completed so far.

        Checked chunk by chunk, while the bytes just copied are still in cache, rather than
        over the whole vector at the end: that pass read the array from memory again and
        wrote a boolean array as large as the vector (fresh pages, zeroed by the kernel)
        for every vector received. A chunk may end inside an element; that element is
        checked with the next chunk.
        """
        done = self._filled // self.array.dtype.itemsize
        if done > self._checked:
            part = self.array[self._checked : done]
            if part.dtype.kind == "f" and not np.isfinite(part).all():
                raise InvalidMessageError("array holds NaN or infinite values")
            self._checked = done

    def result(self) -> np.ndarray:
        """The vector in native byte order (a no-op view on little-endian machines); its
        values were checked finite as they arrived."""
        if not self.complete:
            raise InvalidMessageError("vector is incomplete")
        return self.array.astype(self.array.dtype.newbyteorder("="), copy=False)


@dataclass(frozen=True)
class Malformed:
    """Bytes from a site that are not a SiteMessage; refused by the session, not by gRPC."""

    error: str
    size: int


def decode_site_message(data: bytes) -> pb.SiteMessage | ChunkFrame | Malformed:
    """gRPC's request deserializer: never raises, so garbage cannot abort the stream
    with an anonymous error; the session refuses it with a reason and keeps serving.
    Chunks come back as ``ChunkFrame`` (see ``parse_chunk_frame``)."""
    frame = parse_chunk_frame(data)
    if frame is not None:
        return frame
    try:
        msg = pb.SiteMessage.FromString(data)
    except DecodeError as exc:
        return Malformed(str(exc), len(data))
    return chunk_from_pb(msg.chunk) if msg.WhichOneof("kind") == "chunk" else msg


def decode_server_message(data: bytes) -> pb.ServerMessage | ChunkFrame:
    """The site's response deserializer: chunks as ``ChunkFrame``, the rest parsed by
    protobuf (which raises on garbage: gRPC then ends the call, and the site reconnects)."""
    frame = parse_chunk_frame(data)
    if frame is not None:
        return frame
    msg = pb.ServerMessage.FromString(data)
    return chunk_from_pb(msg.chunk) if msg.WhichOneof("kind") == "chunk" else msg


# ---- payloads ----------------------------------------------------------------------------


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def scalar_to_pb(name: str, value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(flag=value)
    if isinstance(value, int):
        # Scalar.integer is an int64: protobuf would raise a bare ValueError ("Value out of
        # range") from deep inside send(); name the field instead, like every other refusal.
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidMessageError(f"{name[:64]} = {value} does not fit in 64 bits")
        return pb.Scalar(integer=value)
    if isinstance(value, float):
        return pb.Scalar(number=value)
    return pb.Scalar(text=value)


def scalar_from_pb(name: str, v: pb.Scalar) -> Scalar:
    kind = v.WhichOneof("value")
    if kind is None:
        raise InvalidMessageError(f"{name[:64]}: empty value")
    value: Scalar = getattr(v, kind)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidMessageError(f"{name[:64]} is not finite")
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise InvalidMessageError(f"{name[:64]}: text of {len(value)} characters is too long")
    return value


def payload_to_pb(payload: Payload, chunk_bytes: int) -> tuple[pb.Payload, list[np.ndarray]]:
    """The payload's header, and its arrays in the order their chunks must follow."""
    names = list(payload.arrays)
    arrays = [np.asarray(payload.arrays[n]) for n in names]
    if len(arrays) > MAX_ARRAYS or len(payload.scalars) > MAX_SCALARS:
        raise InvalidMessageError(
            f"{payload.kind} message has {len(arrays)} arrays and {len(payload.scalars)} "
            f"scalars; at most {MAX_ARRAYS} and {MAX_SCALARS} travel"
        )
    out = pb.Payload(
        scalars={k: scalar_to_pb(k, v) for k, v in payload.scalars.items()},
        arrays=[array_info(n, a, chunk_bytes) for n, a in zip(names, arrays, strict=True)],
    )
    return out, arrays


def check_names(body: pb.Payload) -> None:
    """Counts and names of a received payload, before anything is allocated for it."""
    if len(body.arrays) > MAX_ARRAYS or len(body.scalars) > MAX_SCALARS:
        raise InvalidMessageError(
            f"{len(body.arrays)} arrays and {len(body.scalars)} scalars exceed the limits "
            f"({MAX_ARRAYS} and {MAX_SCALARS})"
        )
    seen: set[str] = set()
    for name in [*(a.name for a in body.arrays), *body.scalars]:
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidMessageError(f"field name of {len(name)} characters is not allowed")
        if name in seen:
            raise InvalidMessageError(f"field {name[:64]!r} appears twice")
        seen.add(name)


class PayloadAssembler:
    """Receives a payload's arrays, chunk by chunk, in announcement order.

    ``expected`` (name -> (length, dtype)), when given, is exactly what may arrive: any
    other name, length or dtype is refused before a byte is allocated. Otherwise the
    arrays together may hold at most ``max_bytes``.
    """

    def __init__(
        self,
        kind: str,
        round_: int,
        body: pb.Payload,
        request_id: int,
        max_chunk_bytes: int,
        max_bytes: int,
        expected: dict[str, tuple[int, np.dtype]] | None = None,
        alloc: Allocate = np.empty,
    ) -> None:
        check_names(body)
        self.kind, self.round, self.request_id = kind, round_, request_id
        self.scalars = {k: scalar_from_pb(k, v) for k, v in body.scalars.items()}
        if expected is not None:
            got = {a.name: (a.length, dtype_of(a.dtype)) for a in body.arrays}
            if got != {k: (n, np.dtype(d).newbyteorder("<")) for k, (n, d) in expected.items()}:
                want = ", ".join(f"{k} ({n} {np.dtype(d).name})" for k, (n, d) in expected.items())
                have = ", ".join(f"{k[:32]} ({n} {d.name})" for k, (n, d) in got.items())
                raise InvalidMessageError(
                    f"{kind} reply announces arrays [{have}]; expected [{want or 'none'}]"
                )
        total = sum(a.length * dtype_of(a.dtype).itemsize for a in body.arrays)
        if expected is None and total > max_bytes:
            raise InvalidMessageError(
                f"{kind} message announces {total} bytes of arrays, over the limit of {max_bytes}"
            )
        self._parts: list[VectorAssembler] = []
        index = 0
        for info in body.arrays:
            self._parts.append(
                VectorAssembler(info, request_id, max_chunk_bytes, max(total, 1), index, alloc)
            )
            index += info.num_chunks
        self._names = [a.name for a in body.arrays]
        self._current = 0

    @property
    def complete(self) -> bool:
        return self._current == len(self._parts)

    @property
    def nbytes(self) -> int:
        return sum(p.array.nbytes for p in self._parts)

    def add(self, chunk: ChunkFrame | pb.Chunk) -> bool:
        """Copy one chunk in; return True once every array is complete."""
        if self.complete:
            raise InvalidMessageError(f"chunk {chunk.index} after the message was complete")
        if self._parts[self._current].add(chunk):
            self._current += 1
        return self.complete

    def result(self) -> Payload:
        if not self.complete:
            raise InvalidMessageError("message is incomplete")
        arrays = {n: p.result() for n, p in zip(self._names, self._parts, strict=True)}
        return Payload(self.kind, self.round, arrays, dict(self.scalars))


def error_reply(binding: pb.Binding, reason: str) -> pb.Reply:
    return pb.Reply(binding=binding, error=pb.SiteError(reason=reason[:MAX_REASON_CHARS]))
