"""What the server writes to the ledger, built from the round as it happens.

The run driver owns one ``Provenance`` per run. The fit step hands it each reply before
the reply touches the aggregate (``check_update``: the site's signature must verify, or
the update is refused), and the aggregate once it exists; the driver then asks it for
the round's entries and appends them in the same SQLite transaction that commits the
round (store.commit_round), so the ledger and the state can never disagree.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.core.config import JobConfig
from consortia.core.events import PhaseRecord
from consortia.core.join import JoinStatement, statement_json
from consortia.core.messages import FitRes, InvalidMessageError
from consortia.core.version import consortia_version
from consortia.ledger import kinds as K
from consortia.ledger.chain import Entry
from consortia.ledger.receipts import MAX_PAYLOAD_CHARS, ReceiptIns
from consortia.ledger.sign import (
    LedgerKey,
    SiteIdentity,
    site_signature_ok,
    update_digest,
    update_message,
)

log = logging.getLogger(__name__)

Items = list[tuple[str, dict[str, Any]]]
IdentityOf = Callable[[str], SiteIdentity | None]
StatementOf = Callable[[str], JoinStatement | None]
UNSIGNED = SiteIdentity("none", "")  # an insecure deployment's site: no key to check


def plain(value: Any) -> Any:
    """A payload value with no NaN or infinity (written as text), numpy scalars unwrapped."""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class _Update:
    digest: str
    signature: str
    identity: SiteIdentity
    nbytes: int
    examples: int


@dataclass
class Provenance:
    key: LedgerKey
    job_id: str
    identity_of: IdentityOf
    # What each site stated of its policy when it joined (the fleet's record of it).
    statement_of: StatementOf = lambda site: None
    joined: dict[str, SiteIdentity] = field(default_factory=dict)
    # The policy_sha256 and dua each site's latest site_joined entry records.
    stated: dict[str, dict[str, Any]] = field(default_factory=dict)
    _updates: dict[str, _Update] = field(default_factory=dict)
    _refused: dict[str, str] = field(default_factory=dict)  # site -> digest of a refused update
    _aggregate: str | None = None

    def load(self, entries: Sequence[Entry]) -> None:
        """Continue an existing chain: who already joined with which key."""
        for e in entries:
            if e.kind == K.SITE_JOINED:
                d = e.data()
                self.joined[d["site"]] = SiteIdentity(
                    d["key_type"], d["public_key"], d["certificate_serial"]
                )
                self.stated[d["site"]] = {
                    "policy_sha256": d.get("policy_sha256"),
                    "dua": d.get("dua"),
                }

    # ---- during the round (called by the fit step) ---------------------------------------

    def begin_round(self) -> None:
        self._updates.clear()
        self._refused.clear()
        self._aggregate = None

    def check_update(self, site: str, res: FitRes, round_: int) -> None:
        """Refuse an update whose signature does not verify with the site's key."""
        digest = update_digest(res.delta)
        identity = self.identity_of(site)
        if identity is None:
            identity = UNSIGNED
        elif not site_signature_ok(
            identity, res.signature or "", update_message(self.job_id, round_, digest)
        ):
            self._refused[site] = digest
            what = "has no signature" if not res.signature else "signature does not verify"
            raise InvalidMessageError(f"the update's {what} (site key {identity.key_type})")
        self._updates[site] = _Update(
            digest, res.signature or "", identity, int(res.delta.nbytes), res.num_examples
        )

    def aggregate(self, vector: np.ndarray) -> None:
        self._aggregate = update_digest(np.asarray(vector))

    # ---- entries -------------------------------------------------------------------------

    def job_created(
        self,
        cfg: JobConfig,
        *,
        job_sha256: str,
        spec_digest: str,
        rounds: int,
        mode: str,
        checkpoint: dict[str, Any],
    ) -> Items:
        p = cfg.privacy
        return [
            (
                K.JOB_CREATED,
                plain(
                    {
                        "job_id": self.job_id,
                        "name": cfg.name,
                        "job_sha256": job_sha256,
                        "spec_digest": spec_digest,
                        "rounds": rounds,
                        "mode": mode,
                        "strategy": cfg.strategy.model_dump(mode="json"),
                        "privacy": None if p is None else p.model_dump(mode="json"),
                        "secure_aggregation": None
                        if cfg.secure_aggregation is None
                        else cfg.secure_aggregation.model_dump(mode="json"),
                        "ledger_public_key": self.key.public,
                        # Which consortia ran the job: the compliance report's code version.
                        "consortia_version": consortia_version(),
                    }
                ),
            ),
            (K.CHECKPOINT_WRITTEN, checkpoint),
        ]

    def _join(self, site: str, identity: SiteIdentity) -> tuple[str, dict[str, Any]]:
        """A site_joined entry: who the site is and what it stated of its policy."""
        statement = statement_json(self.statement_of(site))
        self.joined[site] = identity
        self.stated[site] = statement
        return (K.SITE_JOINED, {"site": site, **identity.to_json(), **statement})

    def _joins(self, sites: Sequence[str]) -> Items:
        """site_joined again for each site whose update came with another certificate."""
        out: Items = []
        for site in sites:
            u = self._updates.get(site)
            if u is None or self.joined.get(site) == u.identity:
                continue
            out.append(self._join(site, u.identity))
        return out

    def _admitted(self, connected: Sequence[str]) -> Items:
        """site_joined for every admitted site not yet in the ledger, whether or not this
        round asked it: under DP who was sampled stays unrecorded outside the round's own
        entries, so a participant list drawn from these entries names the admitted sites,
        not the sampled ones. Again for a site that has stated another policy since (it
        came back with another policy file, or its statement arrived after its entry),
        with the key already recorded: a new key is recorded with the update it signed."""
        out: Items = []
        for site in sorted(connected):
            if site not in self.joined:
                out.append(self._join(site, self.identity_of(site) or UNSIGNED))
            elif self.stated.get(site) != statement_json(self.statement_of(site)):
                out.append(self._join(site, self.joined[site]))
        return out

    def round_items(
        self,
        round_: int,
        phases: Sequence[PhaseRecord],
        audit: Sequence[Any],
        connected: Sequence[str] = (),
    ) -> Items:
        """round_opened, the sites admitted since the last round, then each asked site's
        outcome in the fit phase."""
        fit = next((p for p in phases if p.name == "fit"), None)
        asked = fit.asked if fit is not None else []
        items: Items = [(K.ROUND_OPENED, {"round": round_, "sites_asked": len(asked)})]
        items += self._admitted(connected)
        if fit is None:
            return items
        accepted = set(fit.accepted)
        items += self._joins([s for s in asked if s in accepted])
        failed = {f.site: f.reason for f in fit.failures}
        flags = {row.get("site"): row for row in audit}
        for site in asked:
            u = self._updates.get(site)
            if site in accepted and u is not None:
                row = flags.get(site, {})
                items.append(
                    (
                        K.UPDATE_RECEIVED,
                        {
                            "round": round_,
                            "site": site,
                            "update_sha256": u.digest,
                            "signature": u.signature or None,
                            "bytes": u.nbytes,
                            "examples": u.examples,
                            "validation": "accepted",
                            "audit_flags": plain(row.get("reasons", [])),
                        },
                    )
                )
                continue
            reason = (failed.get(site) or "no outcome (round aborted)")[:1000]
            digest = self._refused.get(site) or (u.digest if u is not None else None)
            if digest is not None or reason.startswith("reply refused"):
                kind, extra = K.UPDATE_REFUSED, {"update_sha256": digest}
            elif "PolicyRefusal" in reason:
                kind, extra = K.SITE_REFUSED, {}
            else:
                kind, extra = K.SITE_FAILED, {}
            items.append((kind, {"round": round_, "site": site, "reason": reason, **extra}))
        return items

    def closed(
        self, round_: int, model_digest: str, metrics: Mapping[str, Any], checkpoint: dict[str, Any]
    ) -> Items:
        eps = metrics.get("epsilon")
        return [
            (
                K.ROUND_CLOSED,
                {
                    "round": round_,
                    "aggregate_sha256": self._aggregate,
                    "model_digest": model_digest,
                    "epsilon": plain(eps) if isinstance(eps, (int, float)) else None,
                },
            ),
            (K.CHECKPOINT_WRITTEN, checkpoint),
        ]

    def receipts(self, entries: Sequence[Entry]) -> list[tuple[str, ReceiptIns]]:
        """The receipt of each recorded update among a commit's entries, by site."""
        out = []
        for prev, e in itertools.pairwise(entries):
            if e.kind == K.UPDATE_RECEIVED:
                site = e.data()["site"]
                if len(e.payload) > MAX_PAYLOAD_CHARS:  # a site would refuse the whole batch
                    log.warning("entry %d is too long for a receipt; none is sent", e.index)
                elif self.joined.get(site, UNSIGNED) != UNSIGNED:
                    out.append(
                        (site, ReceiptIns.of(self.job_id, e, prev.signature, self.key.public))
                    )
        return out


def checkpoint_payload(
    round_: int, path: str, sha: str, opt_path: str | None, opt_sha: str | None, model: str
) -> dict[str, Any]:
    return {
        "round": round_,
        "path": path,
        "sha256": sha,
        "optimizer_path": opt_path if opt_sha else None,
        "optimizer_sha256": opt_sha,
        "model_digest": model,
    }
