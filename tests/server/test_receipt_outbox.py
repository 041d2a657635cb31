"""The receipts outbox: batched delivery within its share of the time, in order, retried
for sites that could not be reached, and re-sent by a resumed job."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import consortia
from consortia.core.messages import Failure, InvalidMessageError, Reply
from consortia.fleet.base import Fleet, Timing
from consortia.ledger.chain import LedgerError, read_entries
from consortia.ledger.receipts import MAX_BATCH, ReceiptBook, ReceiptIns, ReceiptsIns, ReceiptsRes
from consortia.server.receipt_outbox import ReceiptOutbox

TOY_JOB = Path(__file__).parent.parent / "fixtures" / "toy_job.toml"


def _receipt(index: int, round_: int = 1) -> ReceiptIns:
    h = f"{index:064x}"
    return ReceiptIns(round_, "j", index, h, "", "t", "update_received", "{}", h, "s", "k")


def test_a_batch_travels_as_json_and_comes_back_the_same() -> None:
    batch = [_receipt(3, round_=2), _receipt(9, round_=5)]
    ins = ReceiptsIns.of(batch)
    assert ins.round == 5 and ins.receipts.dtype == np.uint8
    assert ins.items() == batch
    with pytest.raises(ValueError, match="one job"):
        ReceiptsIns.of([_receipt(1), replace(_receipt(2), job="other")])


@pytest.mark.parametrize(
    "text, why",
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[]", "list of 1 to"),
        (b'{"round": 1}', "list of 1 to"),
        (b'[{"round": 1}]', "exactly the fields"),
    ],
)
def test_a_malformed_batch_is_refused_naming_what_is_wrong(text: bytes, why: str) -> None:
    ins = replace(ReceiptsIns.of([_receipt(1)]), receipts=np.frombuffer(text, np.uint8))
    with pytest.raises(InvalidMessageError, match=why):
        ins.items()


def test_a_receipt_of_the_wrong_shape_inside_a_batch_is_refused() -> None:
    good = ReceiptsIns.of([_receipt(1)])
    item = json.loads(good.receipts.tobytes())[0]
    for field, value, why in [
        ("index", "1", "integers"),
        ("round", True, "integers"),
        ("hash", "zz" * 32, "SHA-256"),
        ("kind", "round_closed", "update_received"),
        ("payload", "x" * 17_000, "longer than"),
        ("signature", "s" * 500, "longer than"),
    ]:
        bad = json.dumps([{**item, field: value}]).encode()
        with pytest.raises(InvalidMessageError, match=why):
            replace(good, receipts=np.frombuffer(bad, np.uint8)).items()


class _Fleet(Fleet):
    """Records what each exchange sent; some sites are down, some refuse."""

    def __init__(
        self,
        sites: Sequence[str],
        down: frozenset[str] = frozenset(),
        refuse: frozenset[str] = frozenset(),
    ) -> None:
        self._sites = list(sites)
        self.down, self.refuse = down, refuse
        self.exchanges: list[list[tuple[str, list[int]]]] = []

    def sites(self) -> list[str]:
        return list(self._sites)

    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Any]:
        self.exchanges.append([(site, [r.index for r in b.items()]) for site, b in requests])
        for site, batch in requests:
            n = len(batch.items())
            if site in self.down:
                yield Failure(site, "unreachable")
            elif site in self.refuse:
                yield Reply(site, ReceiptsRes(site, batch.round, 0, 0, n, "no"))
            else:
                yield Reply(site, ReceiptsRes(site, batch.round, n, 0, 0))


def test_each_site_gets_all_its_receipts_in_order_in_one_exchange() -> None:
    box = ReceiptOutbox()
    box.add([("a", _receipt(3)), ("b", _receipt(4)), ("a", _receipt(9)), ("a", _receipt(12))])
    fleet = _Fleet(["a", "b"])
    assert sorted(box.deliver(fleet, Timing(1.0))) == [3, 4, 9, 12]
    assert fleet.exchanges == [[("a", [3, 9, 12]), ("b", [4])]]
    assert len(box) == 0 and not box.due()


def test_unreachable_sites_keep_their_receipts_a_refusal_is_an_answer() -> None:
    box = ReceiptOutbox()
    box.add([("a", _receipt(1)), ("gone", _receipt(2)), ("no", _receipt(3)), ("a", _receipt(4))])
    box.add([("gone", _receipt(5)), ("offline", _receipt(6))])
    fleet = _Fleet(["a", "gone", "no"], down=frozenset({"gone"}), refuse=frozenset({"no"}))
    assert sorted(box.deliver(fleet, Timing(1.0))) == [1, 3, 4]
    assert len(fleet.exchanges) == 1
    assert [site for site, _ in fleet.exchanges[0]] == ["a", "gone", "no"]  # not "offline"
    assert box.undelivered() == ["gone", "offline"] and len(box) == 3
    back = _Fleet(["gone", "offline"])
    assert sorted(box.deliver(back, Timing(1.0))) == [2, 5, 6]
    assert back.exchanges == [[("gone", [2, 5]), ("offline", [6])]]


def test_a_failing_fleet_never_stops_the_run() -> None:
    class Broken(_Fleet):
        def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Any]:
            raise OSError("connection reset")

    box = ReceiptOutbox()
    box.add([("a", _receipt(1))])
    assert box.deliver(Broken(["a"]), Timing(1.0)) == []
    assert len(box) == 1


def test_deliveries_take_at_most_their_share_of_the_time() -> None:
    now = [0.0]
    box = ReceiptOutbox(budget=0.01, clock=lambda: now[0])
    assert not box.due()  # nothing waiting
    box.add([("a", _receipt(1))])
    assert box.due()  # the first delivery: its cost is not known yet

    class Slow(_Fleet):
        def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Any]:
            now[0] += 0.5  # this exchange takes half a second
            yield from super().send(requests, timing)

    box.deliver(Slow(["a"]), Timing(1.0))
    box.add([("a", _receipt(2)), ("a", _receipt(3))])
    now[0] += 49.0
    assert not box.due()  # 0.5 s for one site's delivery is more than 1% of 49 s
    now[0] += 1.0
    assert box.due()  # one site waiting, however many receipts it is owed
    box.add([("b", _receipt(4))])
    assert not box.due()  # two sites: 1 s expected, more than 1% of 50 s
    now[0] += 50.0
    assert box.due()


def test_every_receipt_reaches_its_site_by_the_end_even_on_a_tight_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget zero: one delivery after the first round, then only the final one."""
    import consortia.simulation
    from consortia.server.run import RunOptions

    tight = functools.partial(RunOptions, receipt_budget=0.0)
    monkeypatch.setattr(consortia.simulation, "RunOptions", tight)
    consortia.simulate(TOY_JOB, out=tmp_path / "run", rounds=4)
    _assert_all_receipts_kept(tmp_path / "run")


def _assert_all_receipts_kept(out: Path) -> None:
    with sqlite3.connect(out / "state.sqlite") as db:
        updates = [e.index for e in read_entries(db) if e.kind == "update_received"]
        delivered = {r[0] for r in db.execute("SELECT idx FROM receipts_delivered")}
    kept = [
        r["entry"]["index"]
        for p in (out / "sites").glob("*.receipts.jsonl")
        for r in ReceiptBook(p).read()
    ]
    assert sorted(kept) == updates and delivered == set(updates)


def test_a_resumed_job_sends_the_receipts_a_crash_kept_from_its_sites(tmp_path: Path) -> None:
    out = tmp_path / "run"
    consortia.simulate(TOY_JOB, out=out, rounds=2)
    # What a crash between a commit and the delivery leaves: entries not marked delivered
    # and sites without those receipts. One site keeps what it had.
    books = sorted((out / "sites").glob("*.receipts.jsonl"))
    kept = books[0].read_text()
    for p in books[1:]:
        p.unlink()
    with sqlite3.connect(out / "state.sqlite") as db:
        db.execute("DELETE FROM receipts_delivered")
    consortia.simulate(TOY_JOB, out=out, rounds=4, resume=True)
    _assert_all_receipts_kept(out)
    assert books[0].read_text().startswith(kept)  # nothing kept twice, nothing rewritten


def test_a_site_keeps_a_receipt_once_and_refuses_another_entry_under_its_index(
    tmp_path: Path,
) -> None:
    book = ReceiptBook(tmp_path / "r.jsonl")
    first = _receipt(7)
    assert book.add(first) is True
    assert book.add(first) is False
    assert len(book.read()) == 1
    with pytest.raises(LedgerError, match="entry 7 differs"):
        book.add(replace(first, payload='{"site":"x"}'))
    assert len(book.read()) == 1


def test_a_site_owed_more_than_a_batch_gets_several_in_one_exchange() -> None:
    box = ReceiptOutbox()
    box.add([("a", _receipt(i)) for i in range(MAX_BATCH + 5)])
    fleet = _Fleet(["a"])
    assert len(box.deliver(fleet, Timing(1.0))) == MAX_BATCH + 5
    (exchange,) = fleet.exchanges
    assert [len(indexes) for _, indexes in exchange] == [MAX_BATCH, 5]


def test_a_hostile_reply_counts_as_not_delivered_and_spoils_nothing_else() -> None:
    class Hostile(_Fleet):
        def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Any]:
            for site, batch in requests:
                n = len(batch.items())
                if site == "liar":  # claims another site's name
                    yield Reply(site, ReceiptsRes("a", batch.round, n, 0, 0))
                elif site == "huge":  # counts beyond the batch
                    yield Reply(site, ReceiptsRes(site, batch.round, 10**9, 0, 0))
                elif site == "odd":  # not a receipts reply at all
                    yield Reply(site, "\x1b[2Jstored")
                else:
                    yield Reply(site, ReceiptsRes(site, batch.round, n, 0, 0))

    box = ReceiptOutbox()
    box.add([(s, _receipt(i)) for i, s in enumerate(["a", "huge", "liar", "odd", "z"])])
    assert sorted(box.deliver(Hostile(["a", "huge", "liar", "odd", "z"]), Timing(1.0))) == [0, 4]
    assert box.undelivered() == ["huge", "liar", "odd"]
