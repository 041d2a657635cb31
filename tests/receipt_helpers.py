"""Receipts of a small signed chain of update_received entries, for tests of receipts on
either side (imported by name from the tests folder)."""

from __future__ import annotations

from pathlib import Path

from consortia.ledger import kinds as K
from consortia.ledger.chain import GENESIS, Entry, canonical_json, entry_hash
from consortia.ledger.receipts import ReceiptIns
from consortia.ledger.sign import LedgerKey


def signed_receipts(
    tmp: Path, sites: list[str], job: str = "job", digest: str = "ab" * 32
) -> list[ReceiptIns]:
    """One update_received entry per name in ``sites`` (round i + 1), chained and signed
    with a ledger key made in ``tmp``; the receipt of each."""
    tmp.mkdir(parents=True, exist_ok=True)
    key = LedgerKey.create(tmp)
    out, prev, prev_sig = [], GENESIS, ""
    for i, site in enumerate(sites):
        payload = canonical_json({"round": i + 1, "site": site, "update_sha256": digest})
        h = entry_hash(i, prev, prev_sig, "t", K.UPDATE_RECEIVED, payload)
        e = Entry(i, prev, "t", K.UPDATE_RECEIVED, payload, h, key.sign(bytes.fromhex(h)))
        out.append(ReceiptIns.of(job, e, prev_sig, key.public))
        prev, prev_sig = e.hash, e.signature
    return out
