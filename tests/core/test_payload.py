"""Messages as payloads: any registered dataclass flattens to named arrays and scalars and
comes back equal; whatever does not fit its class is refused with the field named."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortia.core.errors import ConfigError
from consortia.core.messages import (
    ClientPrivacy,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    TrainSettings,
    check_reply,
    decode,
    encode,
    kind_of,
    register_kind,
)
from consortia.core.payload import InvalidMessageError, Payload


@dataclass(frozen=True)
class Inner:
    label: str
    scale: float = 1.0


@dataclass(frozen=True)
class ProbeIns:
    round: int
    data: np.ndarray
    inner: Inner
    flags: dict[str, bool] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True)
class ProbeRes:
    site: str
    round: int
    count: int
    values: np.ndarray


register_kind("probe", ProbeIns, ProbeRes)

names = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


@given(
    rnd=st.integers(0, 10**6),
    data=st.lists(st.integers(0, 255), max_size=50),
    label=st.text(max_size=10),
    scale=st.floats(allow_nan=False, allow_infinity=False),
    flags=st.dictionaries(names, st.booleans(), max_size=4),
    note=st.none() | st.text(max_size=10),
)
def test_any_message_round_trips(rnd, data, label, scale, flags, note) -> None:
    msg = ProbeIns(rnd, np.array(data, np.uint8), Inner(label, scale), flags, note)
    back = decode(encode(msg), reply=False)
    assert back.round == rnd and back.inner == msg.inner and back.flags == flags
    assert back.note == note and np.array_equal(back.data, msg.data)
    assert back.data.dtype == np.uint8


@given(extra=st.dictionaries(names, scalars, max_size=5))
def test_fit_request_round_trips_with_privacy_and_extra_settings(extra) -> None:
    w = np.arange(4, dtype=np.float32)
    privacy = ClientPrivacy("distributed", 1.0, 1.1, 0.1, 1e-5, 3.0, 20, 4)
    msg = FitIns(3, w, TrainSettings(lr=0.2, extra=extra), 12, privacy)
    back = decode(encode(msg), reply=False)
    assert back.settings == msg.settings and back.privacy == privacy and back.seed == 12
    assert np.array_equal(back.weights, w)


def test_the_sender_of_a_reply_comes_from_the_transport_not_the_message() -> None:
    res = FitRes("mallory", 2, np.zeros(3, np.float32), 5, {"loss": 0.5}, clip_bit=0.5)
    p = encode(res)
    assert not any("site" in k or "mallory" in str(v) for k, v in p.scalars.items())
    back = decode(p, reply=True, site="site-a")
    assert back.site == "site-a" and back.clip_bit == 0.5 and back.metrics == {"loss": 0.5}
    with pytest.raises(InvalidMessageError, match="needs its sender's identity"):
        decode(p, reply=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.scalars.pop("num_examples"), "num_examples is missing"),
        (lambda p: p.scalars.update(num_examples="5"), "num_examples must be int"),
        (lambda p: p.scalars.update(num_examples=True), "num_examples must be int, got a flag"),
        (lambda p: p.scalars.update({"metrics[x]": float("nan")}), r"metrics\[x\] is not finite"),
        (lambda p: p.scalars.update(injected=1), "unknown fields: 'injected'"),
        (lambda p: p.arrays.update(extra=np.zeros(1)), "unknown fields: 'extra'"),
    ],
)
def test_a_payload_that_does_not_fit_its_class_is_refused(change, message) -> None:
    p = encode(EvaluateRes("s", 1, 5, {"loss": 1.0}))
    change(p)
    with pytest.raises(InvalidMessageError, match=message):
        decode(p, reply=True, site="s")


def test_unknown_kinds_and_unregistered_classes_are_refused() -> None:
    with pytest.raises(InvalidMessageError, match="unknown message kind 'nope'"):
        decode(Payload("nope", 1), reply=False)
    with pytest.raises(InvalidMessageError, match="not a registered message kind"):
        encode(Inner("x"))
    with pytest.raises(ConfigError, match="already registered to other classes"):
        register_kind("probe", ProbeIns, EvaluateRes)
    with pytest.raises(ConfigError, match="needs a site field"):
        register_kind("bad", ProbeIns, ProbeIns)
    assert kind_of(EvaluateIns(1, np.zeros(1))).name == "evaluate"


def test_check_reply_runs_the_kinds_rules_against_the_request() -> None:
    req = FitIns(4, np.zeros(3, np.float32), TrainSettings(), 0)
    ok = FitRes("a", 4, np.ones(3, np.float32), 2, {})
    assert check_reply(ok, req, "a") is ok
    for bad, message in [
        (EvaluateRes("a", 4, 2, {}), "expected a fit reply"),
        (FitRes("b", 4, ok.delta, 2, {}), "claims sender 'b'"),
        (FitRes("a", 3, ok.delta, 2, {}), "for round 3 arrived in round 4"),
        (FitRes("a", 4, np.ones(2, np.float32), 2, {}), "2 values, the model has 3"),
        (FitRes("a", 4, np.ones(3, np.float64), 2, {}), "dtype float64"),
        (FitRes("a", 4, np.full(3, np.inf, np.float32), 2, {}), "NaN or infinite"),
        (FitRes("a", 4, ok.delta, -1, {}), "non-negative"),
        (FitRes("a", 4, ok.delta, 2, {"x" * 200: 1.0}), "metric name"),
    ]:
        with pytest.raises(InvalidMessageError, match=message):
            check_reply(bad, req, "a")
