"""Privacy instructions and encoded updates survive the wire exactly."""

import numpy as np

from consortia.core.messages import ClientPrivacy, FitIns, FitRes, TrainSettings
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb


def test_client_privacy_and_local_dp_settings_round_trip():
    p = ClientPrivacy("distributed", 1.5, 0.8, 0.05, 1e-6, 37.5, 24, 9, noise_seed=7)
    s = TrainSettings(local_epochs=2, dp_noise_multiplier=1.1, dp_max_grad_norm=0.7)
    w = np.zeros(5, np.float32)
    req = codec.request_to_pb(FitIns(3, w, s, 11, p), "job", 1, 64)
    back = codec.request_from_pb(pb.Request.FromString(req.SerializeToString()), w)
    assert isinstance(back, FitIns)
    assert back.privacy == p and back.settings == s
    assert codec.update_dtype(back) == np.uint64
    plain = codec.request_from_pb(
        codec.request_to_pb(FitIns(3, w, TrainSettings(), 1), "j", 2, 64), w
    )
    assert plain.privacy is None and codec.update_dtype(plain) == np.float32


def test_clip_bit_and_uint64_updates_travel():
    binding = pb.Binding(job_id="j", round=1, phase=pb.PHASE_FIT, request_id=3)
    delta = np.array([0, 2**40, 2**62 - 1], np.uint64)
    reply, vec = codec.reply_to_pb(FitRes("a", 1, delta, 4, {}, clip_bit=-0.5), binding, 8)
    again = pb.Reply.FromString(reply.SerializeToString())
    assert again.fit.HasField("clip_bit") and again.fit.clip_bit == -0.5
    assert again.vector.dtype == pb.DTYPE_UINT64
    asm = codec.VectorAssembler(again.vector, 3, 8, max_bytes=delta.nbytes)
    for chunk in codec.iter_chunks(vec, 3, 8):
        asm.add(chunk)
    np.testing.assert_array_equal(asm.result(), delta)
    reply2, _ = codec.reply_to_pb(FitRes("a", 1, np.zeros(2, np.float32), 4, {}), binding, 8)
    assert not reply2.fit.HasField("clip_bit")
