"""Hand-written chunk frames are byte for byte what protobuf would write, and parse back."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

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
