"""The receipts outbox over gRPC: one exchange carries several receipts to one site, which
keeps them in order; a site that is not connected keeps its receipts waiting."""

from __future__ import annotations

from pathlib import Path

from grpc_site_helpers import SiteStarter, make_site

from consortia.fleet.base import Timing
from consortia.fleet.grpc import GrpcFleet
from consortia.ledger import kinds as K
from consortia.ledger.chain import GENESIS, Entry, canonical_json, entry_hash
from consortia.ledger.receipts import ReceiptBook, ReceiptIns
from consortia.ledger.sign import LedgerKey
from consortia.server.receipt_outbox import ReceiptOutbox


def _receipts(tmp: Path, site: str, rounds: int) -> list[ReceiptIns]:
    """``rounds`` update_received entries of ``site``, chained and signed."""
    tmp.mkdir(parents=True, exist_ok=True)
    key = LedgerKey.create(tmp)
    out, prev, prev_sig = [], GENESIS, ""
    for i in range(rounds):
        payload = canonical_json({"round": i + 1, "site": site, "update_sha256": "ab" * 32})
        h = entry_hash(i, prev, prev_sig, "t", K.UPDATE_RECEIVED, payload)
        e = Entry(i, prev, "t", K.UPDATE_RECEIVED, payload, h, key.sign(bytes.fromhex(h)))
        out.append(ReceiptIns.of("job-1", e, prev_sig, key.public))
        prev, prev_sig = e.hash, e.signature
    return out


def test_several_receipts_to_one_site_in_one_exchange(
    fleet: GrpcFleet, start_site: SiteStarter, tmp_path: Path
) -> None:
    book = ReceiptBook(tmp_path / "site-a.receipts.jsonl")
    start_site(fleet, make_site("site-a"), receipts=book.path)
    assert fleet.wait_for_sites(1, timeout=5) == ["site-a"]
    box = ReceiptOutbox()
    receipts = _receipts(tmp_path / "a", "site-a", 3)
    box.add([("site-a", r) for r in receipts])
    box.add([("site-b", _receipts(tmp_path / "b", "site-b", 1)[0])])  # not connected
    assert box.deliver(fleet, Timing(10)) == [0, 1, 2]
    assert [r["entry"]["index"] for r in book.read()] == [0, 1, 2]
    assert box.undelivered() == ["site-b"] and len(box) == 1
