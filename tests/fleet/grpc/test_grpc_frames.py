"""Hand-written chunk frames are byte for byte what protobuf would write, and parse back."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from consortia.core.payload import Payload
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb


@given(
    rid=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**32 - 1),
    data=st.binary(max_size=300),
)
def test_chunk_frame_equals_protobuf_serialization(rid: int, index: int, data: bytes) -> None:
    chunk = pb.Chunk(request_id=rid, index=index, data=data)
    frame = codec.chunk_frame(rid, index, memoryview(data))
    assert frame == pb.ServerMessage(chunk=chunk).SerializeToString()
    assert frame == pb.SiteMessage(chunk=chunk).SerializeToString()
    assert pb.SiteMessage.FromString(frame).chunk == chunk


def test_frames_carry_the_vector_in_order() -> None:
    v = np.arange(1000, dtype=np.float32)  # 4000 bytes in chunks of 1024: 4 frames
    frames = list(codec.iter_chunk_frames(v, 9, 1024))
    chunks = [pb.ServerMessage.FromString(f).chunk for f in frames]
    assert [(c.request_id, c.index, len(c.data)) for c in chunks] == [
        (9, 0, 1024),
        (9, 1, 1024),
        (9, 2, 1024),
        (9, 3, 928),
    ]
    assert b"".join(c.data for c in chunks) == v.tobytes()
    assert codec.serialize_message(frames[0]) is frames[0]
    hb = pb.ServerMessage(heartbeat=pb.Heartbeat(sequence=3))
    assert codec.serialize_message(hb) == hb.SerializeToString()


def _protobuf_frames(arrays: list[np.ndarray], rid: int, chunk_bytes: int) -> list[bytes]:
    """What protobuf itself writes for the payload's chunks: one running index."""
    out, index = [], 0
    for a in arrays:
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        for i in range(max(1, -(-len(raw) // chunk_bytes))):
            data = raw[i * chunk_bytes : (i + 1) * chunk_bytes]
            chunk = pb.Chunk(request_id=rid, index=index, data=data)
            out.append(pb.SiteMessage(chunk=chunk).SerializeToString())
            index += 1
    return out


def test_payload_frames_run_one_index_across_arrays_exactly_as_protobuf_writes_them() -> None:
    a = np.arange(700, dtype=np.float32)  # 2800 bytes: chunks 0, 1, 2
    b = np.arange(1500, dtype=np.uint8)  # 1500 bytes: chunks 3, 4
    empty = np.zeros(0, np.float64)  # one empty chunk: 5
    c = np.array([2**63, 1], dtype=">u8")  # big-endian input travels little-endian: 6
    arrays = [a, b, empty, c]
    frames = list(codec.iter_payload_frames(arrays, 2**40 + 3, 1024))
    assert frames == _protobuf_frames(arrays, 2**40 + 3, 1024)
    chunks = [pb.SiteMessage.FromString(f).chunk for f in frames]
    assert [ch.index for ch in chunks] == list(range(7))
    assert [len(ch.data) for ch in chunks] == [1024, 1024, 752, 1024, 476, 0, 16]
    # Announced as protobuf would announce them, a receiver rebuilds every array exactly.
    body, sent = codec.payload_to_pb(Payload("x", 1, {"a": a, "b": b, "e": empty, "c": c}), 1024)
    assert [(i.name, i.num_chunks) for i in body.arrays] == [("a", 3), ("b", 2), ("e", 1), ("c", 1)]
    asm = codec.PayloadAssembler("x", 1, body, 2**40 + 3, 1024, 10_000)
    assert [asm.add(ch) for ch in chunks] == [False] * 6 + [True]
    got = asm.result().arrays
    for name, want in zip("abec", arrays, strict=True):
        np.testing.assert_array_equal(got[name], want)
        assert got[name].dtype == want.dtype.newbyteorder("=")
    assert sent[3] is c


# ---- the hand-written receive path ---------------------------------------------------------


def _as_chunk(msg: pb.SiteMessage | pb.ServerMessage) -> tuple[int, int, bytes] | None:
    if msg.WhichOneof("kind") != "chunk":
        return None
    return (msg.chunk.request_id, msg.chunk.index, msg.chunk.data)


def _agrees_with_protobuf(frame: bytes) -> None:
    """Whatever ``parse_chunk_frame`` accepts, protobuf reads as the same chunk in both
    envelopes; whatever it refuses, the decoders still answer as protobuf does."""
    fast = codec.parse_chunk_frame(frame)
    for envelope in (pb.SiteMessage, pb.ServerMessage):
        try:
            slow = _as_chunk(envelope.FromString(frame))
        except DecodeError:
            assert fast is None
            continue
        if fast is not None:
            assert slow == (fast.request_id, fast.index, bytes(fast.data))
    decoded = codec.decode_site_message(frame)
    if isinstance(decoded, codec.ChunkFrame):
        slow = _as_chunk(pb.SiteMessage.FromString(frame))
        assert slow == (decoded.request_id, decoded.index, bytes(decoded.data))


@given(
    rid=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**32 - 1),
    data=st.binary(max_size=300),
)
def test_fast_parser_reads_every_frame_protobuf_writes(rid: int, index: int, data: bytes) -> None:
    frame = codec.chunk_frame(rid, index, memoryview(data))
    fast = codec.parse_chunk_frame(frame)
    if (rid, index, data) == (0, 0, b""):
        assert fast is None  # "\x22\x00": left to protobuf, which reads the same empty chunk
    else:
        assert fast is not None
        assert (fast.request_id, fast.index, bytes(fast.data)) == (rid, index, data)
    _agrees_with_protobuf(frame)
    got = codec.decode_site_message(frame)
    assert isinstance(got, codec.ChunkFrame)
    assert (got.request_id, got.index, bytes(got.data)) == (rid, index, data)


@given(
    rid=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**32 - 1),
    data=st.binary(max_size=40),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.integers(-3, 3),
)
def test_fast_parser_never_disagrees_with_protobuf_on_mutated_frames(
    rid: int, index: int, data: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(codec.chunk_frame(rid, index, memoryview(data)))
    for pos, byte in edits:
        frame[pos % len(frame)] = byte
    if cut < 0:
        del frame[cut:]
    else:
        frame += bytes(cut)
    _agrees_with_protobuf(bytes(frame))


@given(st.binary(max_size=64))
def test_fast_parser_never_disagrees_with_protobuf_on_random_bytes(frame: bytes) -> None:
    _agrees_with_protobuf(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x22",  # no length
        b"\x22\x05\x08\x07\x10\x02\x1a",  # envelope longer than the message
        b"\x22\x03\x08\x07\x10\x02\x1a\x00",  # envelope shorter than the message
        b"\x22\x04\x08\x07\x1a\x02ab",  # data shorter than announced ... (length 4 != 6)
        b"\x22\x06\x08\x07\x1a\x03ab",  # ... or truncated
        b"\x22\x02\x08\x00",  # explicit zero request id: valid protobuf, not canonical
        b"\x22\x03\x08\x87\x00",  # padded varint
        b"\x22\x04\x10\x02\x08\x07",  # fields out of order
        b"\x22\x04\x08\x07\x08\x07",  # a field twice
        b"\x22\x04\x08\x07\x20\x01",  # an unknown field
        b"\x22\x07\x10\x80\x80\x80\x80\x10",  # index beyond uint32 (protobuf truncates it)
        b"\x22\x0b\x08" + b"\xff" * 9 + b"\x02",  # request id beyond uint64
        b"\x22\x0c\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x0a\x00",  # a hello, not a chunk
        b"\x22\x02\x08\x07\x00",  # trailing garbage after the envelope
    ],
)
def test_fast_parser_refuses_everything_but_the_canonical_layout(frame: bytes) -> None:
    assert codec.parse_chunk_frame(frame) is None
    _agrees_with_protobuf(frame)


def test_decoders_turn_non_canonical_chunks_into_frames_and_refuse_garbage() -> None:
    padded = b"\x22\x06\x08\x87\x00\x1a\x01z"  # request id 7 in a padded varint
    site = codec.decode_site_message(padded)
    server = codec.decode_server_message(padded)
    for got in (site, server):
        assert isinstance(got, codec.ChunkFrame)
        assert (got.request_id, got.index, bytes(got.data)) == (7, 0, b"z")
    hello = pb.SiteMessage(hello=pb.Hello(site_name="a")).SerializeToString()
    assert isinstance(codec.decode_site_message(hello), pb.SiteMessage)
    assert isinstance(codec.decode_site_message(b"\x22\x05\x08"), codec.Malformed)
    with pytest.raises(DecodeError):
        codec.decode_server_message(b"\x22\x05\x08")


def test_frame_data_is_a_view_of_the_received_bytes_not_a_copy() -> None:
    frame = codec.chunk_frame(3, 1, memoryview(b"x" * 5000))
    got = codec.parse_chunk_frame(frame)
    assert got is not None and got.data.obj is frame
