"""A fleet whose chosen sites turn malicious: their fit replies are rewritten by the attack.

It wraps the simulation's fleet, so the server's code is the same one that meets real
sites. It waits for the whole phase (the omniscient attacks need every honest update of
the round, as their papers assume), then yields the outcomes in request order with the
attackers' updates replaced. Data poisoning (label flipping, the backdoor) happens before
training, in the attackers' data (``data.py``); this wrapper then only boosts a backdoor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from consortia.attacks import vectors
from consortia.core.messages import FitRes, Outcome, Reply
from consortia.core.rng import generator
from consortia.core.robustness_config import AttackConfig
from consortia.fleet.base import Fleet, Timing
from consortia.ledger.sign import SiteSigner, update_digest, update_message


def choose_malicious(sites: Sequence[str], attack: AttackConfig) -> list[str]:
    """round(fraction x sites) sites, drawn from the attack's seed."""
    k = round(attack.fraction * len(sites))
    chosen = generator(attack.seed, "attack", "sites").choice(len(sites), size=k, replace=False)
    return sorted(sites[i] for i in chosen)


class AttackFleet(Fleet):
    """``signers``: the attackers' own site keys. An attacker is an enrolled site, so it
    signs what it sends; without re-signing, the ledger would refuse every forged update
    and the attack would test the signature check instead of the defences."""

    def __init__(
        self,
        inner: Fleet,
        malicious: Sequence[str],
        attack: AttackConfig,
        signers: dict[str, SiteSigner] | None = None,
    ) -> None:
        self.inner = inner
        self.signers = signers or {}
        self.malicious = set(malicious)
        self.attack = attack

    def sites(self) -> list[str]:
        return self.inner.sites()

    def share(self, weights: np.ndarray) -> np.ndarray:
        return self.inner.share(weights)

    def worker_peaks(self) -> list[int]:
        return self.inner.worker_peaks()

    def end_job(self, status: str) -> None:
        self.inner.end_job(status)

    def close(self) -> None:
        self.inner.close()

    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Outcome]:
        outcomes = list(self.inner.send(requests, timing))
        masked = {site for site, ins in requests if getattr(ins, "secagg", None) is not None}
        fits = {
            o.site: o.message
            for o in outcomes
            # a masked input is not an update: only data poisoning runs under secure
            # aggregation (the job file refuses the other attacks with it)
            if isinstance(o, Reply) and isinstance(o.message, FitRes) and o.site not in masked
        }
        bad = [s for s in fits if s in self.malicious]
        if not bad:
            yield from outcomes
            return
        honest = [fits[s].delta for s in fits if s not in self.malicious]
        sent = self._attack({s: fits[s] for s in bad}, honest, fits[bad[0]].round, len(fits))
        jobs = {site: getattr(ins, "job", None) for site, ins in requests}
        for o in outcomes:
            if isinstance(o, Reply) and o.site in sent:
                msg = o.message
                delta = sent[o.site].astype(msg.delta.dtype)
                yield Reply(o.site, self._signed(msg, delta, jobs.get(o.site)))
            else:
                yield o

    def _signed(self, msg: FitRes, delta: np.ndarray, job: str | None) -> FitRes:
        signer = self.signers.get(msg.site)
        signature = msg.signature
        if signature is not None and signer is not None:
            signature = signer.sign(update_message(job or "", msg.round, update_digest(delta)))
        return dataclasses.replace(msg, delta=delta, signature=signature)

    def _attack(
        self, own: dict[str, FitRes], honest: list[np.ndarray], round_: int, n: int
    ) -> dict[str, np.ndarray]:
        """Each attacker's vector this round."""
        a, sites = self.attack, sorted(own)
        mine = np.stack([own[s].delta.astype(np.float64) for s in sites])
        known = np.stack(honest).astype(np.float64) if honest else mine
        if a.kind == "label_flip" or (a.kind == "backdoor" and a.boost == 1):
            return {}  # the poisoned data did the attack; the update goes as trained
        if a.kind == "backdoor":
            return {s: vectors.scaling(own[s].delta, a.boost) for s in sites}
        if a.kind in ("alie", "ipm", "mimic"):
            if a.kind == "alie":
                z = a.z if a.z is not None else vectors.alie_z(n, len(sites))
                v = vectors.a_little_is_enough(known, z)
            elif a.kind == "ipm":
                v = vectors.inner_product_manipulation(known, a.epsilon)
            else:
                v = vectors.mimic(known, 0)
            return dict.fromkeys(sites, v)
        if a.kind == "gaussian":
            size = mine.shape[1]
            if a.collude:
                v = vectors.gaussian(size, a.sigma, generator(a.seed, "gaussian", round_))
                return dict.fromkeys(sites, v)
            return {
                s: vectors.gaussian(size, a.sigma, generator(a.seed, "gaussian", round_, s))
                for s in sites
            }
        base = {s: (mine.mean(axis=0) if a.collude else own[s].delta) for s in sites}
        if a.kind == "sign_flip":
            return {s: vectors.sign_flip(base[s]) for s in sites}
        return {s: vectors.scaling(base[s], a.scale) for s in sites}
