"""The server's side of SecAgg+: one round's bookkeeping, from keys to the unmasked sum.

Pure protocol state, no transport: the round step (server/secure_fit.py) asks this object
for each phase's requests, hands it each checked reply, and finally asks for the sum.
Naming (Bonawitz et al. 2017): U1 advertised keys, U2 shared their secrets, U3 sent a
masked input; a site of U2 missing from U3 dropped after its pair masks were agreed, and
its mask key is rebuilt so the survivors' halves of those masks can be removed.

What the server learns, if the sites are honest: the sum of U3's inputs; for each site of
U3 its self-mask seed, for each site of U2 \\ U3 its mask private key, never both for one
site (``individual_unmasked`` counts the sites for which it rebuilt both: the report
publishes it, and it is 0 unless the sites' own checks were bypassed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from consortia.core.messages import SecureInput, ring_dtype
from consortia.secagg.context import RoundContext, SecAggError
from consortia.secagg.keys import KEY_BYTES, KeyPair, pair_secret
from consortia.secagg.masking import unmask_sum, word_dtype
from consortia.secagg.messages import (
    BUNDLE_BYTES,
    MAX_PARTICIPANTS,
    KeysIns,
    KeysRes,
    SharesIns,
    SharesRes,
    UnmaskIns,
    UnmaskRes,
    as_array,
)
from consortia.secagg.neighbours import GRAPH_SEED_BYTES, neighbours
from consortia.secagg.shamir import SHARE_BYTES, Share, combine

# With two sites each learns the other's input from the sum and its own: three at least.
MIN_PARTICIPANTS = 3


@dataclass(frozen=True)
class RoundParams:
    """k, t and the ring of one round (server/secure_fit.py derives them from the job)."""

    neighbours: int
    threshold: int
    bits: int
    clip: float = 0.0
    scale: float = 0.0
    weight_cap: int = 0  # 0: the sites send ring elements already (distributed DP)
    # log2 of the union bound on this round's failure (neighbours.failure_bound)
    log2_failure: float = -math.inf


@dataclass
class RoundFigures:
    """What the report says the server saw in one round."""

    round: int
    participants: int = 0
    neighbours: int = 0
    threshold: int = 0
    log2_failure: float | None = None  # None: no failure possible under the assumed counts
    masked_inputs: int = 0
    dropouts_recovered: int = 0
    individual_unmasked: int = 0
    completed: bool = False  # the sum was unmasked (a failed round unmasks nothing)


@dataclass
class ServerRound:
    job: str
    round: int
    sites: Sequence[str]
    params: RoundParams
    graph_seed: bytes = field(default_factory=lambda: os.urandom(GRAPH_SEED_BYTES))

    def __post_init__(self) -> None:
        names = sorted(self.sites)
        if len(set(names)) != len(names) or not MIN_PARTICIPANTS <= len(names) <= MAX_PARTICIPANTS:
            raise SecAggError(
                f"secure aggregation needs {MIN_PARTICIPANTS}..{MAX_PARTICIPANTS} distinct "
                f"sites, got {len(names)}"
            )
        self.ids = {name: i + 1 for i, name in enumerate(names)}
        self.names = {i: name for name, i in self.ids.items()}
        self.graph = neighbours(list(self.names), self.params.neighbours, self.graph_seed)
        self.context = RoundContext(self.job, self.round)
        self.keys: dict[int, tuple[bytes, bytes]] = {}  # U1: id -> (cipher, mask) public keys
        self.peers_of: dict[int, list[int]] = {}  # whom each site was asked to share with
        self.bundles: dict[tuple[int, int], bytes] = {}  # (sender, receiver) -> sealed bundle
        self.shared: set[int] = set()  # U2
        self.senders_of: dict[int, list[int]] = {}  # whose bundles each site of U2 received
        self.masked: set[int] = set()  # U3
        self._sum: np.ndarray | None = None
        self.asked_unmask: dict[int, tuple[list[int], list[int]]] = {}
        self.seed_shares: dict[int, list[Share]] = {}
        self.key_shares: dict[int, list[Share]] = {}
        p = self.params
        self.figures = RoundFigures(
            self.round,
            len(names),
            p.neighbours,
            p.threshold,
            round(p.log2_failure, 2) if math.isfinite(p.log2_failure) else None,
        )

    # -- keys ------------------------------------------------------------------------------
    def keys_requests(self) -> list[tuple[str, KeysIns]]:
        p = self.params
        return [
            (
                name,
                KeysIns(
                    self.round,
                    self.job,
                    i,
                    len(self.ids),
                    p.neighbours,
                    p.threshold,
                    self.graph_seed.hex(),
                    p.bits,
                    p.clip,
                    p.scale,
                    p.weight_cap,
                ),
            )
            for name, i in self.ids.items()
        ]

    def accept_keys(self, site: str, res: KeysRes) -> None:
        cipher, mask = res.cipher_key.tobytes(), res.mask_key.tobytes()
        if cipher == mask or any(mask in pair or cipher in pair for pair in self.keys.values()):
            raise SecAggError("public key repeats one already advertised this round")
        self.keys[self.ids[site]] = (cipher, mask)

    # -- shares ----------------------------------------------------------------------------
    def shares_requests(self) -> list[tuple[str, SharesIns]]:
        out = []
        for i in sorted(self.keys):
            peers = sorted(j for j in self.graph[i] if j in self.keys)
            if len(peers) < self.params.threshold - 1:
                continue  # too few holders for its shares: it cannot take part
            self.peers_of[i] = peers
            out.append(
                (
                    self.names[i],
                    SharesIns(
                        self.round,
                        np.array(peers, np.int64),
                        as_array(b"".join(self.keys[j][0] for j in peers)),
                        as_array(b"".join(self.keys[j][1] for j in peers)),
                    ),
                )
            )
        return out

    def accept_shares(self, site: str, res: SharesRes) -> None:
        i = self.ids[site]
        raw = res.bundles.tobytes()
        for n, j in enumerate(self.peers_of[i]):
            self.bundles[(i, j)] = raw[BUNDLE_BYTES * n : BUNDLE_BYTES * (n + 1)]
        self.shared.add(i)

    # -- masked input ----------------------------------------------------------------------
    def secure_inputs(self) -> dict[str, SecureInput]:
        """Per site of U2: the bundles its neighbours in U2 sealed for it.

        A site with fewer than t - 1 such neighbours cannot mask (it refuses), and if its
        neighbours masked with it, its mask key could not be rebuilt when it drops: so it
        is left out before anyone masks, and its neighbours lose it as a sender, until
        every site left has enough (each removal can only shrink the others' lists).
        """
        active = set(self.shared)
        while True:
            senders_of = {
                j: [i for i in sorted(active) if (i, j) in self.bundles] for j in sorted(active)
            }
            short = {j for j, s in senders_of.items() if len(s) < self.params.threshold - 1}
            if not short:
                break
            active -= short
        out = {}
        for j, senders in senders_of.items():
            self.senders_of[j] = senders
            out[self.names[j]] = SecureInput(
                self.params.bits,
                np.array(senders, np.int64),
                as_array(b"".join(self.bundles[(i, j)] for i in senders)),
            )
        return out

    def accept_masked(self, site: str, masked: np.ndarray) -> None:
        """Add one masked input into the round's running sum (one model-sized vector)."""
        i = self.ids[site]
        if i not in self.senders_of or i in self.masked:
            raise SecAggError(f"site {site} was not asked for a masked input or sent two")
        bits = self.params.bits
        values = masked.view(np.uint32) if ring_dtype(bits) == np.int32 else masked
        # summed in the ring's machine word, which wraps mod 2^32 or 2^64 (2^b divides
        # either): reduced mod 2^b once, in ``result``
        if self._sum is None:
            self._sum = values.astype(word_dtype(bits))
        else:
            np.add(self._sum, values, out=self._sum)
        self.masked.add(i)

    # -- unmask ----------------------------------------------------------------------------
    def unmask_requests(self) -> list[tuple[str, UnmaskIns]]:
        """Each survivor names, among the sites whose bundles it holds, the survivors (its
        own id included) and the dropped; never the same site both ways to anyone."""
        dropped = self.shared - self.masked
        out = []
        for j in sorted(self.masked):
            held = self.senders_of[j]
            alive = sorted([*(i for i in held if i in self.masked), j])
            gone = sorted(i for i in held if i in dropped)
            self.asked_unmask[j] = (alive, gone)
            out.append(
                (
                    self.names[j],
                    UnmaskIns(self.round, np.array(alive, np.int64), np.array(gone, np.int64)),
                )
            )
        return out

    def accept_unmask(self, site: str, res: UnmaskRes) -> None:
        alive, gone = self.asked_unmask[self.ids[site]]
        raw = res.shares.tobytes()
        parts = [
            raw[SHARE_BYTES * n : SHARE_BYTES * (n + 1)] for n in range(len(alive) + len(gone))
        ]
        shares = [Share.from_bytes(p) for p in parts]
        for i, share in zip(alive, shares[: len(alive)], strict=True):
            self.seed_shares.setdefault(i, []).append(share)
        for i, share in zip(gone, shares[len(alive) :], strict=True):
            self.key_shares.setdefault(i, []).append(share)

    def result(self) -> np.ndarray:
        """The survivors' sum in Z_(2^bits); SecAggError (nothing unmasked) when some secret
        has fewer than t shares."""
        if self._sum is None:
            raise SecAggError("no masked input arrived")
        t = self.params.threshold
        partners = self._pair_partners()
        dropped = sorted(partners)
        short = [i for i in sorted(self.masked) if len(self.seed_shares.get(i, [])) < t]
        short += [i for i in dropped if len(self.key_shares.get(i, [])) < t]
        if short:
            raise SecAggError(
                f"{len(short)} sites' secrets have fewer than {t} shares (first: "
                f"{self.names[short[0]]}): too many sites dropped, nothing is unmasked"
            )
        self_seeds = {i: combine(self.seed_shares[i], t) for i in sorted(self.masked)}
        pair_seeds = {}
        for v in dropped:
            key = KeyPair.from_private_bytes(combine(self.key_shares[v], t))
            if key.public != self.keys[v][1]:
                raise SecAggError(f"rebuilt mask key of {self.names[v]} does not match its own")
            for u in partners[v]:
                pair_seeds[(u, v)] = pair_secret(
                    key.private, v, self.keys[u][1], u, self.context, "mask"
                )
        masked_sum = self._sum.astype(np.uint64) & np.uint64((1 << self.params.bits) - 1)
        total = unmask_sum(masked_sum, self_seeds, pair_seeds, self.params.bits, self.context)
        f = self.figures
        f.masked_inputs, f.dropouts_recovered = len(self.masked), len(dropped)
        f.individual_unmasked = len(set(self_seeds) & set(dropped))
        f.completed = True
        return total

    def _pair_partners(self) -> dict[int, list[int]]:
        """For each site of U2 that sent no masked input, the survivors whose masked input
        carries a pair mask with it (ascending); one pass over the survivors' senders."""
        partners: dict[int, list[int]] = {}
        for u in sorted(self.masked):
            for v in self.senders_of.get(u, []):
                if v in self.shared and v not in self.masked:
                    partners.setdefault(v, []).append(u)
        return partners

    @property
    def survivors(self) -> list[str]:
        return [self.names[i] for i in sorted(self.masked)]


__all__ = ["KEY_BYTES", "RoundFigures", "RoundParams", "ServerRound"]
