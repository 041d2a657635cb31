"""The receipts outbox over gRPC: one exchange carries several receipts to one site, which
keeps them in order; a site that is not connected keeps its receipts waiting."""

from __future__ import annotations

from pathlib import Path

from grpc_site_helpers import SiteStarter, make_site

from consortia.fleet.base import Timing
from consortia.fleet.grpc import GrpcFleet
from consortia.ledger.receipts import ReceiptBook
from consortia.server.receipt_outbox import ReceiptOutbox
from receipt_helpers import signed_receipts


def test_several_receipts_to_one_site_in_one_exchange(
    fleet: GrpcFleet, start_site: SiteStarter, tmp_path: Path
) -> None:
    book = ReceiptBook(tmp_path / "site-a.receipts.jsonl")
    start_site(fleet, make_site("site-a"), receipts=book.path)
    assert fleet.wait_for_sites(1, timeout=5) == ["site-a"]
    box = ReceiptOutbox()
    receipts = signed_receipts(tmp_path / "a", ["site-a"] * 3, job="job-1")
    box.add([("site-a", r) for r in receipts])
    offline = signed_receipts(tmp_path / "b", ["site-b"], job="job-1")  # not connected
    box.add([("site-b", offline[0])])
    assert box.deliver(fleet, Timing(10)) == [0, 1, 2]
    assert [r["entry"]["index"] for r in book.read()] == [0, 1, 2]
    assert box.undelivered() == ["site-b"] and len(box) == 1
