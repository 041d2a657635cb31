"""Wire codec: chunking, reassembly into preallocated arrays, payloads and their limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from grpc_site_helpers import wire
from hypothesis import given
from hypothesis import strategies as st

from consortia.core.messages import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    InvalidMessageError,
    Payload,
    TrainSettings,
    check_examples_and_metrics,
    check_reply,
    decode,
    encode,
)
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb

F32 = pb.DTYPE_FLOAT32


def _chunks(frames: Any) -> list[pb.Chunk]:
    return [pb.SiteMessage.FromString(f).chunk for f in frames]


def _roundtrip(v: np.ndarray, chunk: int) -> tuple[np.ndarray, int]:
    info = codec.array_info("v", v, chunk)
    asm = codec.VectorAssembler(info, 7, chunk, max_bytes=v.nbytes)
    chunks = _chunks(codec.iter_chunk_frames(v, 7, chunk))
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
    dtype=st.sampled_from(["float16", "float32", "float64", "uint64", "int64", "int32", "uint8"]),
    chunk=st.integers(1, 5000),
)
def test_any_length_dtype_and_chunk_size_roundtrips(n: int, dtype: str, chunk: int) -> None:
    v = np.linspace(-3, 3, n).astype(dtype) if dtype.startswith("f") else np.arange(n, dtype=dtype)
    out, count = _roundtrip(v, chunk)
    assert count == max(1, -(-v.nbytes // chunk))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, v)


def test_big_endian_input_travels_little_endian_and_comes_back_equal() -> None:
    v = np.arange(100, dtype=">f8")
    first = _chunks(codec.iter_chunk_frames(v, 1, 8))[0]
    assert first.index == 0 and len(first.data) == 8
    assert np.frombuffer(first.data, "<f8")[0] == 0.0
    out, _ = _roundtrip(v, 64)
    np.testing.assert_array_equal(out, np.arange(100.0))


def _asm(
    length: int = 10, chunks: int = 3, max_bytes: int = 10_000, first: int = 0
) -> codec.VectorAssembler:
    info = pb.ArrayInfo(name="v", length=length, dtype=F32, num_chunks=chunks)
    return codec.VectorAssembler(
        info, 5, max_chunk_bytes=16, max_bytes=max_bytes, first_index=first
    )


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
    later = _asm(first=4)  # the second array of a payload whose first took chunks 0-3
    with pytest.raises(InvalidMessageError, match="chunk 0 arrived, expected chunk 4"):
        later.add(_chunk(0, 16))
    assert later.add(_chunk(4, 16)) is False


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
    with pytest.raises(InvalidMessageError, match="incomplete"):
        _asm().result()


def test_assembler_refuses_announcements_before_allocating() -> None:
    with pytest.raises(InvalidMessageError, match="exceeds the limit of 39 bytes"):
        _asm(max_bytes=39)
    with pytest.raises(InvalidMessageError, match="2 chunks cannot carry 40 bytes"):
        _asm(chunks=2)  # 40 bytes need at least 3 chunks of 16
    with pytest.raises(InvalidMessageError, match="41 chunks cannot carry 40 bytes"):
        _asm(chunks=41)  # more chunks than bytes: only empty chunks could follow
    with pytest.raises(InvalidMessageError, match=r"exceeds the limit"):
        _asm(length=2**60)  # 4 EiB: refused, not attempted
    with pytest.raises(InvalidMessageError, match="unknown array dtype code 0"):
        codec.VectorAssembler(pb.ArrayInfo(length=1, dtype=0, num_chunks=1), 1, 16, 100)
    with pytest.raises(InvalidMessageError, match="unknown array dtype code 99"):
        codec.VectorAssembler(pb.ArrayInfo(length=1, dtype=99, num_chunks=1), 1, 16, 100)


def test_assembled_float_array_with_nan_or_inf_is_refused_integers_are_not_checked() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(InvalidMessageError, match="NaN or infinite"):
            _roundtrip(np.array([1.0, bad], dtype=np.float32), 8)
    out, _ = _roundtrip(np.array([0, 2**64 - 1], dtype=np.uint64), 8)
    assert out.tolist() == [0, 2**64 - 1]


def test_only_listed_dtypes_and_flat_arrays_travel() -> None:
    for dtype in ("complex128", "bool", "int16", "object"):
        with pytest.raises(InvalidMessageError, match=f"dtype {dtype} cannot travel"):
            codec.array_info("a", np.zeros(3, dtype=dtype), 16)
    with pytest.raises(InvalidMessageError, match="a: arrays travel flat"):
        codec.array_info("a", np.zeros((2, 2), np.float32), 16)
    info = codec.array_info("a", np.arange(3, dtype=np.int64), 16)
    assert (info.name, info.length, info.dtype, info.num_chunks) == ("a", 3, pb.DTYPE_INT64, 2)


# ---- payloads: message -> Payload -> protobuf bytes -> chunks -> Payload -> message -----


def test_fit_request_roundtrips_settings_including_scalar_extras() -> None:
    s = TrainSettings(3, 16, "adam", 0.1, 0.9, 1e-4, 0.01, {"a": 1, "b": 2.5, "c": "x", "d": True})
    w = np.arange(40, dtype=np.float32)  # 160 bytes: 3 chunks of 64
    back = wire(FitIns(4, w, s, 99), reply=False)
    assert isinstance(back, FitIns)
    assert (back.round, back.seed, back.settings, back.privacy) == (4, 99, s, None)
    np.testing.assert_array_equal(back.weights, w)
    assert back.weights.dtype == np.float32
    assert back.settings.extra == {"a": 1, "b": 2.5, "c": "x", "d": True}
    assert type(back.settings.extra["a"]) is int and type(back.settings.extra["d"]) is bool
    assert type(back.settings.extra["b"]) is float


def test_evaluate_request_and_both_replies_roundtrip() -> None:
    w = np.ones(3, np.float64)
    ev = wire(EvaluateIns(2, w), reply=False)
    assert isinstance(ev, EvaluateIns) and ev.round == 2
    np.testing.assert_array_equal(ev.weights, w)
    res = EvaluateRes("site-a", 2, 17, {"loss": 0.25, "acc": 1.0})
    assert wire(res, reply=True, site="site-a") == res
    fit = wire(FitRes("site-a", 2, w, 5, {"m": 1.0}), reply=True, site="site-a")
    assert (fit.site, fit.round, fit.num_examples, fit.metrics, fit.clip_bit) == (
        "site-a",
        2,
        5,
        {"m": 1.0},
        None,
    )


def test_the_sender_field_of_a_reply_is_the_receivers_identity_never_the_senders_words() -> None:
    res = EvaluateRes("site-a", 2, 17, {"loss": 0.25})
    assert "site" not in encode(res).scalars  # a reply does not name its sender on the wire
    assert wire(res, reply=True, site="site-b").site == "site-b"
    with pytest.raises(InvalidMessageError, match="needs its sender's identity"):
        wire(res, reply=True, site=None)
    forged = Payload("evaluate", 2, scalars={**encode(res).scalars, "site": "site-a"})
    with pytest.raises(InvalidMessageError, match="unknown fields: 'site'"):
        decode(forged, reply=True, site="site-b")
    forged_round = Payload("evaluate", 2, scalars={**encode(res).scalars, "round": 9})
    with pytest.raises(InvalidMessageError, match="unknown fields: 'round'"):
        decode(forged_round, reply=True, site="site-b")


def test_unsendable_messages_are_clear_errors() -> None:
    w = np.ones(1, np.float32)
    with pytest.raises(InvalidMessageError, match=r"settings.extra\[l\] is a list"):
        encode(FitIns(1, w, TrainSettings(extra={"l": [1]}), 0))
    with pytest.raises(InvalidMessageError, match="seed = 18446744073709551616 does not fit"):
        codec.payload_to_pb(encode(FitIns(1, w, TrainSettings(), 2**64)), 64)
    with pytest.raises(InvalidMessageError, match="weights: arrays travel flat"):
        codec.payload_to_pb(encode(EvaluateIns(1, np.ones((2, 2), np.float32))), 64)
    with pytest.raises(InvalidMessageError, match="dtype complex64 cannot travel"):
        codec.payload_to_pb(encode(EvaluateIns(1, np.ones(2, np.complex64))), 64)
    with pytest.raises(InvalidMessageError, match="str is not a registered message kind"):
        encode("hello")
    many = Payload("x", 1, scalars={f"s{i}": i for i in range(codec.MAX_SCALARS + 1)})
    with pytest.raises(InvalidMessageError, match="1025 scalars; at most 64 and 1024 travel"):
        codec.payload_to_pb(many, 64)
    arrays = {f"a{i}": w for i in range(codec.MAX_ARRAYS + 1)}
    with pytest.raises(InvalidMessageError, match="65 arrays"):
        codec.payload_to_pb(Payload("x", 1, arrays=arrays), 64)


def test_a_request_body_must_be_its_kinds_message() -> None:
    w = np.ones(2, np.float32)
    ev = encode(EvaluateIns(2, w))
    as_fit = Payload("fit", ev.round, ev.arrays, ev.scalars)
    with pytest.raises(InvalidMessageError, match="settings is missing"):
        decode(as_fit, reply=False)
    fit = encode(FitIns(2, w, TrainSettings(), 3))
    as_ev = Payload("evaluate", fit.round, fit.arrays, fit.scalars)
    with pytest.raises(InvalidMessageError, match="evaluate message has unknown fields: 'seed'"):
        decode(as_ev, reply=False)
    with pytest.raises(InvalidMessageError, match="unknown message kind 'bogus'"):
        decode(Payload("bogus", 1), reply=False)
    typed = Payload("fit", fit.round, fit.arrays, {**fit.scalars, "seed": "three"})
    with pytest.raises(InvalidMessageError, match="seed must be int, got str"):
        decode(typed, reply=False)
    flagged = Payload("fit", fit.round, fit.arrays, {**fit.scalars, "seed": True})
    with pytest.raises(InvalidMessageError, match="seed must be int, got a flag"):
        decode(flagged, reply=False)


def test_a_reply_must_be_the_requests_kind() -> None:
    fit = FitIns(1, np.ones(2, np.float32), TrainSettings(), 0)
    with pytest.raises(InvalidMessageError, match="expected a fit reply, got EvaluateRes"):
        check_reply(EvaluateRes("s", 1, 5, {"m": 1.0}), fit, "s")
    with pytest.raises(InvalidMessageError, match="reply for round 2 arrived in round 1"):
        check_reply(FitRes("s", 2, np.ones(2, np.float32), 5, {}), fit, "s")
    with pytest.raises(InvalidMessageError, match="claims sender 'a' but came from 's'"):
        check_reply(FitRes("a", 1, np.ones(2, np.float32), 5, {}), fit, "s")


def test_metrics_and_example_counts_are_checked() -> None:
    check_examples_and_metrics(3, {"loss": 0.5})
    with pytest.raises(InvalidMessageError, match="'loss' must be a finite number"):
        check_examples_and_metrics(3, {"loss": float("inf")})
    with pytest.raises(InvalidMessageError, match="257 metrics exceed the limit of 256"):
        check_examples_and_metrics(3, {str(i): 0.0 for i in range(257)})
    with pytest.raises(InvalidMessageError, match="metric name 'xxx"):
        check_examples_and_metrics(3, {"x" * 129: 0.0})
    for n in (2**60, -1, True, 3.0):
        with pytest.raises(InvalidMessageError, match="num_examples must be a non-negative int"):
            check_examples_and_metrics(n, {})


# ---- what arrives is checked before anything is allocated for it ------------------------


def _header(arrays: Sequence[pb.ArrayInfo] = (), **scalars: pb.Scalar) -> pb.Payload:
    return pb.Payload(arrays=list(arrays), scalars=scalars)


def _assembler(body: pb.Payload, expected: Any = None, max_bytes: int = 1000) -> Any:
    return codec.PayloadAssembler("fit", 1, body, 3, 16, max_bytes, expected)


def test_received_scalars_must_be_finite_present_and_short() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(InvalidMessageError, match="x is not finite"):
            _assembler(_header(x=pb.Scalar(number=bad)))
    with pytest.raises(InvalidMessageError, match="x: empty value"):
        _assembler(_header(x=pb.Scalar()))
    with pytest.raises(InvalidMessageError, match="text of 4097 characters is too long"):
        _assembler(_header(x=pb.Scalar(text="y" * 4097)))
    ok = _assembler(_header(a=pb.Scalar(text="y" * 4096), b=pb.Scalar(integer=-(2**63))))
    assert ok.complete and ok.result().scalars == {"a": "y" * 4096, "b": -(2**63)}


def test_received_names_and_counts_are_limited() -> None:
    one = pb.Scalar(flag=True)
    with pytest.raises(InvalidMessageError, match="0 arrays and 1025 scalars exceed the limits"):
        _assembler(pb.Payload(scalars={f"s{i}": one for i in range(1025)}))
    arrays = [pb.ArrayInfo(name=f"a{i}", length=0, dtype=F32, num_chunks=1) for i in range(65)]
    with pytest.raises(InvalidMessageError, match="65 arrays and 0 scalars exceed the limits"):
        _assembler(_header(arrays))
    with pytest.raises(InvalidMessageError, match="field name of 257 characters"):
        _assembler(pb.Payload(scalars={"n" * 257: one}))
    with pytest.raises(InvalidMessageError, match="field name of 0 characters"):
        _assembler(pb.Payload(scalars={"": one}))
    twice = [pb.ArrayInfo(name="d", length=1, dtype=F32, num_chunks=1)]
    with pytest.raises(InvalidMessageError, match="field 'd' appears twice"):
        _assembler(_header(twice * 2))
    with pytest.raises(InvalidMessageError, match="field 'd' appears twice"):
        _assembler(_header(twice, d=one))


DELTA6 = {"delta": (6, np.dtype(np.float32))}


@pytest.mark.parametrize(
    ("arrays", "shown"),
    [
        ([("delta", 5, F32)], "delta (5 float32)"),
        ([("delta", 6, pb.DTYPE_FLOAT64)], "delta (6 float64)"),
        ([("weights", 6, F32)], "weights (6 float32)"),
        ([("delta", 6, F32), ("extra", 1, F32)], "delta (6 float32), extra (1 float32)"),
        ([], ""),
        ([("delta", 2**60, F32)], f"delta ({2**60} float32)"),  # never allocated
    ],
    ids=["length", "dtype", "name", "extra-array", "no-array", "huge"],
)
def test_assembler_refuses_arrays_other_than_the_kinds_exact_expectation(
    arrays: list[tuple[str, int, int]], shown: str
) -> None:
    body = _header([pb.ArrayInfo(name=n, length=k, dtype=d, num_chunks=1) for n, k, d in arrays])
    with pytest.raises(InvalidMessageError) as info:
        _assembler(body, DELTA6)
    assert str(info.value) == (
        f"fit reply announces arrays [{shown}]; expected [delta (6 float32)]"
    )


def test_assembler_takes_exactly_the_expected_arrays_of_any_dtype() -> None:
    expected = {"img": (20, np.dtype(np.uint8)), "x": (3, np.dtype(">f8"))}
    body = _header(
        [
            pb.ArrayInfo(name="img", length=20, dtype=pb.DTYPE_UINT8, num_chunks=2),
            pb.ArrayInfo(name="x", length=3, dtype=pb.DTYPE_FLOAT64, num_chunks=2),
        ]
    )
    asm = _assembler(body, expected)
    img, x = np.arange(20, dtype=np.uint8), np.array([1.5, -2.0, 3.0])
    for frame in codec.iter_payload_frames([img, x], 3, 16):
        asm.add(pb.SiteMessage.FromString(frame).chunk)
    out = asm.result()
    np.testing.assert_array_equal(out.arrays["img"], img)
    np.testing.assert_array_equal(out.arrays["x"], x)
    with pytest.raises(InvalidMessageError, match="chunk 4 after the message was complete"):
        asm.add(_chunk(4, 1, rid=3))
    with pytest.raises(InvalidMessageError, match="expected \\[none\\]"):
        _assembler(body, {})  # e.g. an evaluate reply: no arrays at all


def test_assembler_without_expectation_holds_a_byte_budget() -> None:
    body = _header(
        [
            pb.ArrayInfo(name="a", length=100, dtype=F32, num_chunks=25),
            pb.ArrayInfo(name="b", length=151, dtype=pb.DTYPE_UINT8, num_chunks=10),
        ]
    )
    with pytest.raises(InvalidMessageError, match="announces 551 bytes of arrays, over the limit"):
        _assembler(body, max_bytes=550)
    assert _assembler(body, max_bytes=551).nbytes == 551
    huge = _header([pb.ArrayInfo(name="a", length=2**62, dtype=F32, num_chunks=1)])
    with pytest.raises(InvalidMessageError, match="over the limit of 1000"):
        _assembler(huge)


def test_assembler_refuses_a_second_arrays_chunks_out_of_order() -> None:
    body = _header(
        [
            pb.ArrayInfo(name="a", length=8, dtype=F32, num_chunks=2),  # chunks 0, 1
            pb.ArrayInfo(name="b", length=4, dtype=F32, num_chunks=1),  # chunk 2
        ]
    )
    asm = _assembler(body)
    asm.add(_chunk(0, 16, rid=3))
    assert asm.add(_chunk(1, 16, rid=3)) is False
    with pytest.raises(InvalidMessageError, match="chunk 0 arrived, expected chunk 2"):
        asm.add(_chunk(0, 16, rid=3))  # the second array restarting the count
    asm2 = _assembler(body)
    asm2.add(_chunk(0, 16, rid=3))
    asm2.add(_chunk(1, 16, rid=3))
    assert asm2.add(_chunk(2, 16, rid=3)) is True
    assert sorted(asm2.result().arrays) == ["a", "b"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 4, 5, 9])  # element 4 straddles chunks 0 and 1
def test_non_finite_values_are_refused_in_the_chunk_that_completes_them(
    bad: float, where: int
) -> None:
    v = np.arange(10, dtype=np.float32)
    v[where] = bad
    raw = v.tobytes()  # 40 bytes in chunks of 18: elements 0-3, 4-8, 9 complete in turn
    info = pb.ArrayInfo(name="v", length=10, dtype=pb.DTYPE_FLOAT32, num_chunks=3)
    asm = codec.VectorAssembler(info, 5, max_chunk_bytes=18, max_bytes=40)
    completing = 0 if where < 4 else 1 if where < 9 else 2
    for i in range(completing):
        assert not asm.add(codec.ChunkFrame(5, i, memoryview(raw)[i * 18 : (i + 1) * 18]))
    with pytest.raises(InvalidMessageError, match="NaN or infinite"):
        asm.add(codec.ChunkFrame(5, completing, memoryview(raw)[completing * 18 :][:18]))


def test_uint64_vectors_are_not_checked_for_finiteness() -> None:
    v = np.array([2**64 - 1, 0, 7], dtype=np.uint64)
    info = pb.ArrayInfo(name="v", length=3, dtype=pb.DTYPE_UINT64, num_chunks=1)
    asm = codec.VectorAssembler(info, 5, max_chunk_bytes=64, max_bytes=24)
    assert asm.add(codec.ChunkFrame(5, 0, memoryview(v.tobytes())))
    np.testing.assert_array_equal(asm.result(), v)
