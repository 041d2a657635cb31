"""Large arrays between the pool's processes go through files, written once, read in place."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from consortia.client.app import SiteApp
from consortia.core.messages import EvaluateIns
from consortia.fleet import bulk
from consortia.fleet.base import Reply, Timing
from consortia.fleet.pool import PoolFleet

BIG = bulk.THRESHOLD // 4 + 1  # float32 values just over the threshold


@dataclass(frozen=True)
class Msg:
    big: np.ndarray
    small: np.ndarray
    name: str


def _big(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(BIG).astype(np.float32)


def test_a_large_array_travels_as_a_file_and_a_small_one_inline(tmp_path: Path) -> None:
    writer = bulk.ReplyWriter(tmp_path)
    msg = Msg(_big(), np.arange(3.0), "x")
    data = bulk.dumps(msg, writer.put)
    assert len(data) < 4096  # the large array's bytes are not in the pickle
    (written,) = tmp_path.iterdir()
    assert written.stat().st_size == msg.big.nbytes
    out = bulk.loads(data)
    assert np.array_equal(out.big, msg.big) and np.array_equal(out.small, msg.small)
    assert not list(tmp_path.iterdir())  # the receiver owns a reply's file: unlinked on load
    assert out.big.flags.writeable  # copy-on-write: writable, and private to the receiver
    out.big[0] = 42.0
    assert out.big[0] == 42.0


def test_a_truncated_file_is_refused_naming_it(tmp_path: Path) -> None:
    writer = bulk.ReplyWriter(tmp_path)
    data = bulk.dumps(Msg(_big(), np.zeros(1), "x"), writer.put)
    (written,) = tmp_path.iterdir()
    with open(written, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=str(written)):
        bulk.loads(data)


def test_a_broadcast_writes_each_array_once_and_removes_its_files(tmp_path: Path) -> None:
    model = _big()
    phase = bulk.Broadcast(tmp_path, tag=7)
    batches = [phase.dumps([Msg(model, np.zeros(1), s) for s in "abc"]) for _ in range(2)]
    assert len(list(tmp_path.iterdir())) == 1  # 6 messages in 2 batches, one file
    for data in batches:
        got = bulk.loads(data)
        assert all(np.array_equal(m.big, model) for m in got)
        got[0].big[:] = 0.0  # a receiver's write stays its own
    assert np.array_equal(bulk.loads(batches[0])[1].big, model)
    phase.close()
    assert not list(tmp_path.iterdir())


def test_the_shared_model_is_read_only_and_never_written_again(tmp_path: Path) -> None:
    weights = _big()
    shared = bulk.SharedModel(tmp_path, 0, weights)
    assert np.array_equal(shared.array, weights) and not shared.array.flags.writeable
    phase = bulk.Broadcast(tmp_path, tag=1, shared=shared)
    got = bulk.loads(phase.dumps(Msg(shared.array, np.zeros(1), "a")))
    assert np.array_equal(got.big, weights)
    assert [p.name for p in tmp_path.iterdir()] == ["model-0.bin"]  # no per-phase copy
    phase.close()
    assert [p.name for p in tmp_path.iterdir()] == ["model-0.bin"]  # not the phase's to remove
    shared.release()
    assert not list(tmp_path.iterdir())
    assert np.array_equal(shared.array, weights)  # the mapping outlives the file


class Echo(SiteApp):
    """Replies with the model it was sent plus its own number, after ``delay`` seconds."""

    def __init__(self, site_id: str) -> None:
        super().__init__(site_id)

    def on_evaluate(self, ins: EvaluateIns) -> Msg:
        time.sleep(0.3 if self.site_id == "s0" else 0.0)  # s0 answers last: others wait
        return Msg(ins.weights + np.float32(int(self.site_id[1:])), np.zeros(1), self.site_id)


def test_pool_replies_with_large_arrays_in_order_and_leaves_no_files() -> None:
    fleet = PoolFleet([f"s{i}" for i in range(6)], Echo, workers=2)
    directory = fleet._dir
    try:
        for rnd in (1, 2):
            model = fleet.share(_big(rnd))
            requests = [(f"s{i}", EvaluateIns(rnd, model)) for i in range(6)]
            outcomes = list(fleet.send(requests, Timing(30.0)))
            assert [o.site for o in outcomes] == [s for s, _ in requests]
            for i, o in enumerate(outcomes):
                assert isinstance(o, Reply)
                assert np.array_equal(o.message.big, model + np.float32(i))
            del outcomes, o
            # only the round's shared model is left: phase files and replies are gone
            assert [p.name for p in directory.iterdir()] == [f"model-{rnd - 1}.bin"]
    finally:
        fleet.close()
    assert not directory.exists()
