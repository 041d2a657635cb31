"""Wire codec: chunking, reassembly into a preallocated array, and boundary checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortia.core.messages import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    InvalidMessageError,
    TrainSettings,
)
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb


def _roundtrip(v: np.ndarray, chunk: int) -> tuple[np.ndarray, int]:
    info = codec.vector_info(v, chunk)
    asm = codec.VectorAssembler(info, 7, chunk, max_bytes=v.nbytes)
    chunks = list(codec.iter_chunks(v, 7, chunk))
    done = [asm.add(c) for c in chunks]
    assert done == [False] * (len(chunks) - 1) + [True]
    return asm.result(), len(chunks)


def test_vector_of_several_chunks_roundtrips_exactly_with_a_short_last_chunk() -> None:
    v = np.random.default_rng(0).standard_normal(10_001).astype(np.float32)  # 40_004 bytes
    out, n = _roundtrip(v, 4096)
    assert n == 10  # ceil(40004 / 4096)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, v)


@given(
    n=st.integers(0, 3000),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    chunk=st.integers(1, 5000),
)
def test_any_length_dtype_and_chunk_size_roundtrips(n: int, dtype: str, chunk: int) -> None:
    v = np.linspace(-3, 3, n).astype(dtype)
    out, count = _roundtrip(v, chunk)
    assert count == max(1, -(-v.nbytes // chunk))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, v)


def test_big_endian_input_travels_little_endian_and_comes_back_equal() -> None:
    v = np.arange(100, dtype=">f8")
    first = next(codec.iter_chunks(v, 1, 8))
    assert first.index == 0 and len(first.data) == 8
    assert np.frombuffer(first.data, "<f8")[0] == 0.0
    out, _ = _roundtrip(v, 64)
    np.testing.assert_array_equal(out, np.arange(100.0))


def _asm(length: int = 10, chunks: int = 3, max_bytes: int = 10_000) -> codec.VectorAssembler:
    info = pb.VectorInfo(length=length, dtype=pb.DTYPE_FLOAT32, num_chunks=chunks)
    return codec.VectorAssembler(info, 5, max_chunk_bytes=16, max_bytes=max_bytes)


def _chunk(index: int, nbytes: int, rid: int = 5) -> pb.Chunk:
    return pb.Chunk(request_id=rid, index=index, data=b"\0" * nbytes)


def test_assembler_refuses_out_of_order_foreign_and_oversize_chunks() -> None:
    asm = _asm()  # 40 bytes in 3 chunks of at most 16
    with pytest.raises(InvalidMessageError, match="expected chunk 0"):
        asm.add(_chunk(1, 16))
    with pytest.raises(InvalidMessageError, match="chunk for request 6"):
        asm.add(_chunk(0, 16, rid=6))
    with pytest.raises(InvalidMessageError, match="exceeds 16 bytes"):
        asm.add(_chunk(0, 17))


def test_assembler_refuses_too_many_or_too_few_bytes() -> None:
    asm = _asm()
    asm.add(_chunk(0, 16))
    asm.add(_chunk(1, 16))
    with pytest.raises(InvalidMessageError, match="more than the announced 40 bytes"):
        asm.add(_chunk(2, 16))
    short = _asm()
    short.add(_chunk(0, 16))
    short.add(_chunk(1, 16))
    with pytest.raises(InvalidMessageError, match="with 36 of 40 bytes"):
        short.add(_chunk(2, 4))


def test_assembler_refuses_announcements_before_allocating() -> None:
    with pytest.raises(InvalidMessageError, match="exceeds the limit of 39 bytes"):
        _asm(max_bytes=39)
    with pytest.raises(InvalidMessageError, match="2 chunks cannot carry 40 bytes"):
        _asm(chunks=2)  # 40 bytes need at least 3 chunks of 16
    with pytest.raises(InvalidMessageError, match="unknown vector dtype"):
        codec.VectorAssembler(pb.VectorInfo(length=1, dtype=0, num_chunks=1), 1, 16, 100)


def test_assembled_vector_with_nan_is_refused() -> None:
    v = np.array([1.0, np.nan], dtype=np.float32)
    with pytest.raises(InvalidMessageError, match="NaN or infinite"):
        _roundtrip(v, 8)


def test_only_float_vectors_travel() -> None:
    with pytest.raises(InvalidMessageError, match="dtype int64 cannot travel"):
        codec.vector_info(np.arange(3), 16)
    with pytest.raises(InvalidMessageError, match="1-D"):
        codec.vector_info(np.zeros((2, 2), np.float32), 16)


def test_fit_request_roundtrips_settings_including_scalar_extras() -> None:
    s = TrainSettings(3, 16, "adam", 0.1, 0.9, 1e-4, 0.01, {"a": 1, "b": 2.5, "c": "x", "d": True})
    w = np.ones(3, np.float32)
    req = codec.request_to_pb(FitIns(4, w, s, 99), "job", 12, 1024)
    assert (req.binding.job_id, req.binding.round, req.binding.request_id) == ("job", 4, 12)
    back = codec.request_from_pb(pb.Request.FromString(req.SerializeToString()), w)
    assert isinstance(back, FitIns)
    assert (back.round, back.seed, back.settings) == (4, 99, s)
    np.testing.assert_array_equal(back.weights, w)
    assert back.settings.extra == {"a": 1, "b": 2.5, "c": "x", "d": True}
    assert type(back.settings.extra["a"]) is int and type(back.settings.extra["d"]) is bool


def test_unsendable_settings_and_seeds_are_clear_errors() -> None:
    w = np.ones(1, np.float32)
    with pytest.raises(InvalidMessageError, match=r"extra\['l'\] is a list"):
        codec.request_to_pb(FitIns(1, w, TrainSettings(extra={"l": [1]}), 0), "j", 1, 64)
    with pytest.raises(InvalidMessageError, match="seed must be non-negative"):
        codec.request_to_pb(FitIns(1, w, TrainSettings(), -1), "j", 1, 64)
    with pytest.raises(InvalidMessageError, match="FitIns or EvaluateIns"):
        codec.phase_of("hello")


def test_request_body_must_match_its_phase() -> None:
    w = np.ones(1, np.float32)
    req = codec.request_to_pb(EvaluateIns(2, w), "j", 1, 64)
    assert isinstance(codec.request_from_pb(req, w), EvaluateIns)
    req.binding.phase = pb.PHASE_FIT
    with pytest.raises(InvalidMessageError, match="does not fit phase"):
        codec.request_from_pb(req, w)


def test_reply_type_must_match_the_phase() -> None:
    fit_b = pb.Binding(job_id="j", round=1, phase=pb.PHASE_FIT, request_id=3)
    reply, vec = codec.reply_to_pb(FitRes("s", 1, np.ones(2, np.float32), 5, {"m": 1}), fit_b, 64)
    assert reply.fit.num_examples == 5 and dict(reply.fit.metrics) == {"m": 1.0}
    assert vec is not None and reply.vector.length == 2
    with pytest.raises(InvalidMessageError, match="answered a fit request with EvaluateRes"):
        codec.reply_to_pb(EvaluateRes("s", 1, 5, {}), fit_b, 64)


def test_metrics_are_checked() -> None:
    assert codec.metrics_from_pb({"loss": 0.5}) == {"loss": 0.5}
    with pytest.raises(InvalidMessageError, match="'loss' is not finite"):
        codec.metrics_from_pb({"loss": float("inf")})
    with pytest.raises(InvalidMessageError, match="exceed the limit of 256"):
        codec.metrics_from_pb({str(i): 0.0 for i in range(257)})
    with pytest.raises(InvalidMessageError, match="name of 129 characters"):
        codec.metrics_from_pb({"x" * 129: 0.0})
    with pytest.raises(InvalidMessageError, match="implausibly large"):
        codec.num_examples_from_pb(2**60)
