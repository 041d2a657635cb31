"""Site middleware for the ledger: sign each update on its way out, keep the receipts.

``attach(app, signer, book)`` works on any SiteApp (the built-in Site or a user's own),
in simulation and behind ``consortia client`` alike: the signature travels in the
FitRes, the receipt arrives as its own message kind some time after the round is committed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from consortia.client.app import Handler, SiteApp
from consortia.core.messages import FitIns, FitRes
from consortia.ledger.chain import LedgerError
from consortia.ledger.receipts import ReceiptBook, ReceiptsIns, ReceiptsRes, check_receipt
from consortia.ledger.sign import SiteSigner, update_digest, update_message

log = logging.getLogger(__name__)

MakeSite = Callable[[str], Any]

# Digests this site signed, per round, kept to check the receipt against. Receipts come
# in batches, possibly only when the job ends: every round of a job is kept (a string a
# round), up to this many.
_KEEP_ROUNDS = 10_000


def sign_update(app: SiteApp, message: Any, call_next: Handler) -> Any:
    """Sign (job, round, digest of the update) with the site's key; the outermost stage,
    so that it signs exactly what leaves the site (after clipping, noise, encoding)."""
    reply = call_next(message)
    signer: SiteSigner | None = getattr(app, "ledger_signer", None)
    if signer is None or not isinstance(message, FitIns) or not isinstance(reply, FitRes):
        return reply
    digest = update_digest(reply.delta)
    signed: dict[int, str] = app.__dict__.setdefault("ledger_signed", {})
    signed[message.round] = digest
    if len(signed) > _KEEP_ROUNDS:
        del signed[min(signed)]
    return dataclasses.replace(
        reply, signature=signer.sign(update_message(message.job or "", message.round, digest))
    )


def keep_receipts(app: SiteApp, message: Any, call_next: Handler) -> Any:
    """Check and store a batch of the server's receipts for this site's updates."""
    if not isinstance(message, ReceiptsIns):
        return call_next(message)
    book: ReceiptBook | None = getattr(app, "receipt_book", None)
    items = message.items()  # checked for shape on arrival (InvalidMessageError otherwise)
    if book is None:
        return ReceiptsRes(
            app.site_id, message.round, 0, 0, len(items), "this site keeps no receipts"
        )
    signed = getattr(app, "ledger_signed", {})
    good, reasons = [], []
    for ins in items:
        try:
            check_receipt(ins, app.site_id, signed.get(ins.round))
            good.append(ins)
        except LedgerError as exc:
            reasons.append(f"entry {ins.index}: {exc}")
    try:
        kept, held, refused = book.add_many(good)
    except (LedgerError, OSError) as exc:
        kept, held, refused = 0, 0, [f"{book.path}: {exc}"] * len(good)
    reasons += refused
    for reason in reasons[:3]:
        log.warning("site %s: receipt refused: %s", app.site_id, reason)
    first = reasons[0][:2000] if reasons else ""
    return ReceiptsRes(app.site_id, message.round, kept, held, len(reasons), first)


def attach(app: SiteApp, signer: SiteSigner | None, book: ReceiptBook | None) -> SiteApp:
    """Give ``app`` a signing key and a receipt file, and the two middleware stages."""
    app.ledger_signer = signer  # type: ignore[attr-defined]
    app.receipt_book = book  # type: ignore[attr-defined]
    for stage in (sign_update, keep_receipts):
        if stage not in app.middleware:
            app.middleware.insert(0, stage)
    return app


# ---- simulation: one Ed25519 key per virtual site, made for the run ------------------

SITES_FOLDER = "sites"


def site_file(run_dir: Path, site: str, suffix: str) -> Path:
    """``sites/<site><suffix>`` in the run folder, the name made safe for a file system."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in site).lstrip(".") or "_"
    return run_dir / SITES_FOLDER / f"{safe}{suffix}"


def simulation_keys(run_dir: Path, site_ids: Sequence[str], resume: bool) -> dict[str, SiteSigner]:
    """A resumed run's site keys from its folder; a new run's made in memory (written by
    ``save_simulation_keys`` once the job exists, so a refused run overwrites nothing)."""
    if not resume:
        return {s: SiteSigner.generate() for s in site_ids}
    out = {}
    for s in site_ids:
        path = site_file(run_dir, s, ".key")
        out[s] = SiteSigner.load(path) if path.is_file() else SiteSigner.generate()
    return out


def save_simulation_keys(run_dir: Path, signers: dict[str, SiteSigner]) -> None:
    (run_dir / SITES_FOLDER).mkdir(exist_ok=True)
    for site, signer in signers.items():
        path = site_file(run_dir, site, ".key")
        if not path.exists():
            signer.save(path)


def with_ledger(make: MakeSite, run_dir: Path, signers: dict[str, SiteSigner]) -> MakeSite:
    """Each virtual site signs with its run key and keeps receipts in ``sites/``."""

    def make_signed(site_id: str) -> Any:
        app = make(site_id)
        if not isinstance(app, SiteApp):
            return app  # a bare handler without middleware: its updates go unsigned
        book = ReceiptBook(site_file(run_dir, site_id, ".receipts.jsonl"))
        return attach(app, signers.get(site_id), book)

    return make_signed


# ---- deployment: the certificate's own key --------------------------------------------


def attach_deployed(site: Any, pki_dir: Path | None, receipts: Path | None) -> None:
    """A deployed site signs with its certificate's P-256 key (what the server
    authenticated) and keeps its receipts in ``receipts``, by default ``receipts.jsonl``
    in its PKI folder. Without a PKI folder (``--insecure``) it has no key to sign with.
    A site object that is not a SiteApp (no middleware) is left as it is."""
    if not isinstance(site, SiteApp):
        return
    signer = None
    if pki_dir is not None:
        from cryptography import x509

        from consortia.security.pki import site_paths

        paths = site_paths(pki_dir)
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        signer = SiteSigner.load(paths.key, f"{cert.serial_number:x}")
        receipts = receipts or paths.directory / "receipts.jsonl"
    attach(site, signer, None if receipts is None else ReceiptBook(receipts))
