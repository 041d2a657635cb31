"""Hand-written chunk frames are byte for byte what protobuf would write, and parse back."""

from __future__ import annotations

import numpy as np
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
