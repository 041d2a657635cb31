"""The fuzz benchmark (bench/_chaos_fuzz.py) in its quick form: a few hundred hostile
messages from every kind of peer against a live server while three honest sites run a
job; nothing crashes, nothing stored changes, the honest sites finish with the digest of
the run without fuzzing. The full run (10,000 messages) is the benchmark's, not a test's."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from consortia.core.messages import FitIns, TrainSettings, kind_of
from consortia.fleet.grpc import GrpcFleet, codec
from consortia.fleet.grpc import federation_pb2 as pb
from consortia.fleet.grpc.session import Pending, Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _chaos_fuzz  # noqa: E402  (bench/_chaos_fuzz.py)
from _fuzz_plan import SHARES  # noqa: E402
from _hostile import expected_refusals  # noqa: E402


def test_quick_fuzz_leaves_the_server_up_its_store_unchanged_and_the_sites_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fuzz.json"
    assert _chaos_fuzz.main(["--quick", "--json", str(out)]) == 0, capsys.readouterr().out
    f = json.loads(out.read_text())
    assert f["messages"] == 300
    assert set(f["sent_by_peer"]) == set(SHARES)  # every kind of peer sent
    assert all(n > 0 for n in f["sent_by_peer"].values()), f["sent_by_peer"]
    assert f["server_crashes"] == 0 and f["server_exit"] == 0
    assert f["store_changes"] == 0, f["store_diffs"]
    assert f["honest_sites_finished"] and f["final_digest"] == f["reference_digest"]
    assert f["welcomed_hostile_peers"] == 0 and f["raw_held_past_handshake"] == 0
    # every hostile message on the live stream was refused with a logged reason ...
    assert f["refusals_logged_site_stream"] == f["refusals_expected_site_stream"] > 0
    # ... every hostile first message of a new stream too, and every peer saw its refusal
    firsts = f["sent_by_peer"]["new stream, mallory's cert"]
    firsts += f["sent_by_peer"]["new stream, honest certs"]
    assert f["refusals_logged_connections"] == firsts
    assert sum(f["connection_refusals"].values()) == sum(
        n for k, n in f["sent_by_peer"].items() if not k.startswith("site stream")
    )


def _refusals_by_a_live_session(sent: list[bytes]) -> int:
    """What a real session refuses of ``sent`` while request 1 (round 1 fit) is open."""
    fleet = GrpcFleet("127.0.0.1:0", job_id="job-1", insecure=True, chunk_bytes=1024)
    try:
        session = Session(fleet, "s", chunk_bytes=1024)
        fit = FitIns(1, np.zeros(6, np.float32), TrainSettings(), 0)
        session.submit(Pending(1, "s", fit, kind_of(fit)))
        for data in sent:
            session.on_message(codec.decode_site_message(data))
        session.close("end of test")
        return fleet.refusal_count
    finally:
        fleet.close()


def test_the_refusal_model_follows_the_server_after_the_sites_own_answer() -> None:
    """The fuzz benchmark's model of mallory's stream counts as the server refuses when
    mallory's own answer comes after hostile messages: an answer that a hostile reply
    pre-empted is refused, and the chunks of that request that follow (the next round's
    mutations of its real frames) are dropped quietly with it; an answer the server takes
    leaves the following chunks refused."""
    binding = pb.Binding(job_id="job-1", round=1, kind="fit", request_id=1)
    hostile = pb.SiteMessage(reply=pb.Reply(binding=binding)).SerializeToString()  # no body
    stray = pb.SiteMessage(reply=pb.Reply(binding=pb.Binding(job_id="job-1", request_id=5)))
    answer = pb.SiteMessage(reply=codec.error_reply(binding, "declines")).SerializeToString()
    chunk = codec.chunk_frame(1, 0, b"\x00" * 24)

    pre_empted = [hostile, stray.SerializeToString(), answer, chunk]
    assert _refusals_by_a_live_session(pre_empted) == 3  # the chunk goes with the answer
    assert expected_refusals(pre_empted) == 3

    taken = [stray.SerializeToString(), answer, chunk]
    assert _refusals_by_a_live_session(taken) == 2  # the chunk is not arriving: refused
    assert expected_refusals(taken, accepted={1}) == 2
    with pytest.raises(ValueError, match="not a reply"):
        expected_refusals(taken, accepted={2})
