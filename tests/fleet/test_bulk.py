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


def _writer(tmp_path: Path, slots: int = 0) -> tuple[bulk.ReplyWriter, bulk.ReplySlots]:
    reply_slots = bulk.ReplySlots(tmp_path, "w0", slots)
    return bulk.ReplyWriter(tmp_path, reply_slots), reply_slots


def test_a_large_array_travels_as_a_file_and_a_small_one_inline(tmp_path: Path) -> None:
    writer, _ = _writer(tmp_path)  # no free slot: a file of its own
    msg = Msg(_big(), np.arange(3.0), "x")
    data = bulk.dumps(msg, writer.put)
    assert len(data) < 4096  # the large array's bytes are not in the pickle
    (written,) = tmp_path.iterdir()
    assert written.stat().st_size == msg.big.nbytes
    out = bulk.Reader().loads(data)
    assert np.array_equal(out.big, msg.big) and np.array_equal(out.small, msg.small)
    assert not list(tmp_path.iterdir())  # the receiver owns such a file: unlinked on load
    assert out.big.flags.writeable  # copy-on-write: writable, and private to the receiver
    out.big[0] = 42.0
    assert out.big[0] == 42.0


def test_reply_slots_are_reused_once_the_parent_lets_go(tmp_path: Path) -> None:
    writer, slots = _writer(tmp_path, slots=2)
    reader = bulk.Reader({slots.name: slots})
    first = reader.loads(bulk.dumps(Msg(_big(1), np.zeros(1), "a"), writer.put))
    second = reader.loads(bulk.dumps(Msg(_big(2), np.zeros(1), "b"), writer.put))
    view = second.big[10:20]  # a view keeps its slot taken, as the whole array does
    third = reader.loads(bulk.dumps(Msg(_big(3), np.zeros(1), "c"), writer.put))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["slot-w0-0.bin", "slot-w0-1.bin"]  # the third: its own file, unlinked
    assert np.array_equal(first.big, _big(1)) and np.array_equal(third.big, _big(3))
    del first, second
    assert slots.take() == 0 and slots.take() is None  # slot 1 is held by the view
    slots.release(0)
    del view
    assert slots.take() == 0 and slots.take() == 1
    assert np.array_equal(third.big, _big(3))


def test_a_truncated_file_is_refused_naming_it(tmp_path: Path) -> None:
    writer, _ = _writer(tmp_path)
    data = bulk.dumps(Msg(_big(), np.zeros(1), "x"), writer.put)
    (written,) = tmp_path.iterdir()
    with open(written, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=str(written)):
        bulk.Reader().loads(data)


def test_a_broadcast_writes_each_array_once_and_removes_its_files(tmp_path: Path) -> None:
    model = _big()
    phase = bulk.Broadcast(tmp_path, tag=7)
    batches = [phase.dumps([Msg(model, np.zeros(1), s) for s in "abc"]) for _ in range(2)]
    assert len(list(tmp_path.iterdir())) == 1  # 6 messages in 2 batches, one file
    reader = bulk.Reader()
    for data in batches:
        got = reader.loads(data)
        assert all(np.array_equal(m.big, model) for m in got)
        got[0].big[:] = 0.0  # a receiver's write stays its own
    assert np.array_equal(reader.loads(batches[0])[1].big, model)
    phase.close()
    assert not list(tmp_path.iterdir())


def test_the_shared_model_is_read_only_and_never_written_again(tmp_path: Path) -> None:
    weights = _big()
    shared, array = bulk.SharedModel.write(tmp_path / "model-0.bin", weights)
    assert np.array_equal(array, weights) and not array.flags.writeable
    phase = bulk.Broadcast(tmp_path, tag=1, shared=shared)
    got = bulk.Reader().loads(phase.dumps(Msg(array, np.zeros(1), "a")))
    assert np.array_equal(got.big, weights)
    assert [p.name for p in tmp_path.iterdir()] == ["model-0.bin"]  # no per-phase copy
    phase.close()
    assert [p.name for p in tmp_path.iterdir()] == ["model-0.bin"]  # not the phase's to remove
    assert shared.in_use
    del array
    assert not shared.in_use


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
            # what is left: one model file, reused every round once the last model is
            # let go, and the workers' reusable reply slots
            left = {p.name for p in directory.iterdir()}
            assert {n for n in left if not n.startswith("slot-")} == {"model-0.bin"}
            del model, requests
    finally:
        fleet.close()
    assert not directory.exists()
