"""A site keeping a batch of receipts: the good ones kept in one write, each bad one
refused with its reason, a repeated one kept once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from consortia.client.signing import keep_receipts
from consortia.ledger.receipts import ReceiptBook, ReceiptIns, ReceiptsIns, ReceiptsRes
from receipt_helpers import signed_receipts


def _site(tmp: Path, signed: dict[int, str] | None = None) -> Any:
    book = ReceiptBook(tmp / "mine.receipts.jsonl")
    return SimpleNamespace(site_id="a", receipt_book=book, ledger_signed=signed or {})


def _keep(app: Any, batch: list[ReceiptIns]) -> ReceiptsRes:
    reply = keep_receipts(app, ReceiptsIns.of(batch), lambda m: None)
    assert isinstance(reply, ReceiptsRes)
    return reply


def test_the_good_receipts_of_a_batch_are_kept_and_each_bad_one_refused(tmp_path: Path) -> None:
    good = signed_receipts(tmp_path, ["a", "a", "b", "a"])
    forged = replace(good[3], signature=good[0].signature)
    app = _site(tmp_path, signed={2: "cd" * 32})  # round 2: the site signed another digest
    reply = _keep(app, [good[0], good[1], good[2], forged])
    assert (reply.kept, reply.held, reply.refused) == (1, 0, 3)
    assert "another update" in reply.reason  # the first refusal: entry 1's digest
    assert [r["entry"]["index"] for r in app.receipt_book.read()] == [0]


def test_a_batch_sent_again_is_kept_once(tmp_path: Path) -> None:
    batch = signed_receipts(tmp_path, ["a", "a", "a"])
    app = _site(tmp_path)
    assert (_keep(app, batch[:2]).kept, _keep(app, batch).kept) == (2, 1)
    again = _keep(app, batch)
    assert (again.kept, again.held, again.refused) == (0, 3, 0)
    assert [r["entry"]["index"] for r in app.receipt_book.read()] == [0, 1, 2]


def test_a_site_without_a_receipts_file_refuses_the_batch(tmp_path: Path) -> None:
    app = SimpleNamespace(site_id="a", receipt_book=None)
    reply = _keep(app, signed_receipts(tmp_path, ["a", "a"]))
    assert (reply.kept, reply.refused) == (0, 2) and "keeps no receipts" in reply.reason


def test_the_book_reads_its_file_once_and_again_only_when_someone_else_wrote(
    tmp_path: Path, monkeypatch: Any
) -> None:
    batch = signed_receipts(tmp_path, ["a", "a", "a", "a"])
    book = ReceiptBook(tmp_path / "mine.receipts.jsonl")
    reads = []
    inner = ReceiptBook.read
    monkeypatch.setattr(ReceiptBook, "read", lambda self: reads.append(1) or inner(self))
    book.add_many(batch[:1])
    book.add_many(batch[1:2])
    book.add_many(batch[:2])  # both held already
    assert len(reads) == 1
    # Another writer appends a different entry under index 2; the book sees it.
    other = ReceiptBook(book.path)
    forged = replace(batch[2], time="another time")
    assert other.add(forged) is True
    kept, held, refused = book.add_many(batch[2:])
    assert (kept, held) == (1, 0) and refused and "entry 2 differs" in refused[0]
    assert len(reads) == 3  # the other book's first read, and this book's second
