"""Privacy instructions and encoded updates survive the wire exactly."""

from dataclasses import replace

import numpy as np
import pytest
from grpc_site_helpers import wire

from consortia.core.messages import (
    ClientPrivacy,
    FitIns,
    FitRes,
    InvalidMessageError,
    TrainSettings,
    check_reply,
    encode,
    kind_named,
    update_dtype,
)
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.session import Pending


def test_client_privacy_and_local_dp_settings_round_trip():
    p = ClientPrivacy("distributed", 1.5, 0.8, 0.05, 1e-6, 37.5, 24, 9)
    s = TrainSettings(local_epochs=2, dp_noise_multiplier=1.1, dp_max_grad_norm=0.7, extra={"k": 2})
    w = np.zeros(5, np.float32)
    back = wire(FitIns(3, w, s, 11, p), reply=False)
    assert isinstance(back, FitIns)
    assert back.privacy == p and back.settings == s
    assert type(back.privacy.bits) is int and type(back.privacy.clip_norm) is float
    assert update_dtype(back) == np.uint64
    central = ClientPrivacy("central", 1.0, 1.1, 0.1, 1e-5)
    # No seed for a site's noise travels (the site keys its own CSPRNG), nor the site-local
    # switch for seeded DP-SGD noise.
    sent = encode(FitIns(3, w, replace(s, dp_seeded_noise=True), 1, central)).scalars
    assert not [k for k in sent if "noise_seed" in k or "dp_seeded_noise" in k]
    again = wire(FitIns(3, w, s, 1, central), reply=False)
    assert again.privacy == central
    assert update_dtype(again) == np.float32
    plain = wire(FitIns(3, w, TrainSettings(), 1), reply=False)
    assert plain.privacy is None and update_dtype(plain) == np.float32


def test_clip_bit_and_uint64_updates_travel():
    delta = np.array([0, 2**40, 2**62 - 1], np.uint64)
    res = FitRes("a", 1, delta, 4, {"m": 0.0}, clip_bit=-0.5)
    payload = encode(res)
    assert payload.scalars["clip_bit"] == -0.5
    body, _ = codec.payload_to_pb(payload, 8)
    again = pb.Payload.FromString(body.SerializeToString())
    assert again.scalars["clip_bit"].WhichOneof("value") == "number"
    assert [(a.name, a.dtype, a.num_chunks) for a in again.arrays] == [
        ("delta", pb.DTYPE_UINT64, 3)
    ]
    back = wire(res, reply=True, chunk=8, site="a")
    assert back.clip_bit == -0.5 and back.delta.dtype == np.uint64
    np.testing.assert_array_equal(back.delta, delta)
    no_bit = FitRes("a", 1, np.zeros(2, np.float32), 4, {"m": 0.0})
    assert "clip_bit" not in encode(no_bit).scalars
    assert wire(no_bit, reply=True, site="a").clip_bit is None


def test_a_distributed_dp_reply_is_held_to_uint64_and_the_modulus():
    p = ClientPrivacy("distributed", 1.5, 0.8, 0.05, 1e-6, 37.5, 24, 9)
    req = FitIns(1, np.zeros(3, np.float32), TrainSettings(), 0, p)
    exact, _ = Pending(1, "a", req, kind_named("fit")).reply_limits()
    assert exact == {"delta": (3, np.dtype(np.uint64))}
    ok = FitRes("a", 1, np.array([0, 1, 2**24 - 1], np.uint64), 4, {"m": 0.0})
    assert check_reply(ok, req, "a") is ok
    wide = FitRes("a", 1, np.array([0, 1, 2**24], np.uint64), 4, {"m": 0.0})
    with pytest.raises(InvalidMessageError, match="values of 24 bits or more"):
        check_reply(wide, req, "a")
    with pytest.raises(InvalidMessageError, match=r"clip bit must be -0\.5 or 0\.5"):
        check_reply(FitRes("a", 1, ok.delta, 4, {}, clip_bit=0.3), req, "a")
