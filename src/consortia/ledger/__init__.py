"""The provenance ledger: a hash-chained, signed record of a job that anyone can verify.

``chain`` defines an entry, its canonical bytes and hash, and appends entries inside the
caller's SQLite transaction; ``sign`` holds the keys (the server's Ed25519 ledger key,
the sites' update signatures); ``verify`` is a pure function over the entries;
``receipts`` is what a site keeps to prove what the server recorded of its updates.
docs/ledger.md says what each part protects against, and what it does not.
"""

from consortia.ledger.chain import Entry, LedgerError, canonical_json
from consortia.ledger.verify import VerifyReport, verify_entries

__all__ = ["Entry", "LedgerError", "VerifyReport", "canonical_json", "verify_entries"]
