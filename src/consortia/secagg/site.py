"""A site's side of SecAgg+: one round's state machine, refusing whatever is out of turn.

The site keeps, for the round in progress only: its two fresh key pairs and its self-mask
seed (keys step), its neighbours' public keys (shares step), the shares its neighbours
sealed for it (masked-input step), and whether it has answered an unmask request. Each
step checks the round and the step before it; a second request for a step already done,
a request for an older round, or one that skips a step raises ``SecAggError`` and the
site answers nothing for it. A new round (or a retry of the same round number) starts
from the keys step with new keys, so nothing revealed in an abandoned attempt helps with
the next.

What the server cannot make an honest site do:
- agree masks or share secrets with anyone but its graph neighbours (it recomputes the
  graph from the published seed);
- mask with, or unmask for, fewer than t neighbours;
- reveal both the self-mask share and the mask-key share of one peer: a peer is named
  survivor or dropped once, in the one unmask answer a round gets, and the site never
  names itself dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from consortia.secagg.channel import open_sealed, seal
from consortia.secagg.context import RoundContext, SecAggError
from consortia.secagg.encoding import FixedPoint, UniformSource
from consortia.secagg.keys import KEY_BYTES, KeyPair, pair_secret
from consortia.secagg.masking import SEED_BYTES, mask_words, word_dtype
from consortia.secagg.messages import (
    BUNDLE_BYTES,
    KeysIns,
)
from consortia.secagg.neighbours import neighbours_of
from consortia.secagg.shamir import SHARE_BYTES, Share, split

KEYS, SHARED, MASKED, UNMASKED = "keys", "shares", "masked input", "unmask"


@dataclass
class _Round:
    ins: KeysIns
    context: RoundContext
    cipher: KeyPair
    mask: KeyPair
    self_seed: bytes
    graph: frozenset[int]
    step: str = KEYS
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (cipher, mask)
    # the bundle key agreed with each peer at the shares step, kept to open its bundle at the
    # masked-input step (one X25519 agreement per peer and round instead of two)
    bundle_keys: dict[int, bytes] = field(default_factory=dict)
    # (self-mask seed share, mask-key share) of each peer, and this site's own pair
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    masked_with: frozenset[int] = frozenset()


class SiteProtocol:
    """One site's SecAgg+ state across the steps of a round (see the module docstring)."""

    def __init__(self) -> None:
        self._round: _Round | None = None

    # -- steps -----------------------------------------------------------------------------
    def keys(self, ins: KeysIns) -> tuple[bytes, bytes]:
        """Start a round: two fresh key pairs and a self-mask seed; the public keys out."""
        current = self._round
        if current is not None and ins.round < current.ins.round:
            raise SecAggError(
                f"keys for round {ins.round} refused: round {current.ins.round} has started"
            )
        ids = list(range(1, ins.sites + 1))
        graph = neighbours_of(ids, ins.neighbours, bytes.fromhex(ins.graph_seed), ins.me)
        state = _Round(
            ins,
            RoundContext(ins.job, ins.round),
            KeyPair.generate(),
            KeyPair.generate(),
            os.urandom(SEED_BYTES),
            graph,
        )
        self._round = state
        return state.cipher.public, state.mask.public

    def shares(self, round_: int, peers: list[int], cipher_keys: bytes, mask_keys: bytes) -> bytes:
        """Shamir-share the self-mask seed and the mask private key t-of-(m + 1) among the
        m neighbours that advertised keys and this site; one sealed bundle per neighbour."""
        r = self._expect(round_, KEYS, SHARED)
        t = r.ins.threshold
        stray = set(peers) - r.graph
        if stray:
            raise SecAggError(f"site {min(stray)} is not a neighbour of site {r.ins.me}")
        if len(peers) < t - 1:
            raise SecAggError(
                f"only {len(peers)} neighbours advertised keys: with this site fewer than "
                f"the threshold {t} could hold its shares"
            )
        for i, peer in enumerate(peers):
            c = cipher_keys[KEY_BYTES * i : KEY_BYTES * (i + 1)]
            m = mask_keys[KEY_BYTES * i : KEY_BYTES * (i + 1)]
            r.peers[peer] = (c, m)
        holders = sorted([*peers, r.ins.me])
        seed_shares = split(r.self_seed, t, len(holders))
        key_shares = split(r.mask.private_bytes(), t, len(holders))
        out = bytearray()
        for holder, s_share, k_share in zip(holders, seed_shares, key_shares, strict=True):
            pair = (s_share.to_bytes(), k_share.to_bytes())
            if holder == r.ins.me:
                r.held[holder] = pair
                continue
            key = pair_secret(
                r.cipher.private, r.ins.me, r.peers[holder][0], holder, r.context, "cipher"
            )
            r.bundle_keys[holder] = key
            out += seal(key, pair[0] + pair[1], r.ins.me, holder, r.context)
        r.step = SHARED
        return bytes(out)

    def mask(
        self,
        round_: int,
        bits: int,
        senders: list[int],
        bundles: bytes,
        ring_vector: np.ndarray,
    ) -> np.ndarray:
        """Open the bundles sealed for this site, then mask ``ring_vector`` with the self
        mask and the pair masks of exactly the neighbours whose bundles arrived. The result
        is in the ring's machine word (uint32 when bits <= 32, else uint64)."""
        r = self._expect(round_, SHARED, MASKED)
        if bits != r.ins.bits:
            raise SecAggError(f"masked input asked in {bits} bits, the round agreed {r.ins.bits}")
        unknown = set(senders) - set(r.peers)
        if unknown:
            raise SecAggError(f"site {min(unknown)} sent no keys to this site this round")
        if len(senders) < r.ins.threshold - 1:
            raise SecAggError(
                f"only {len(senders)} neighbours shared their secrets; at least "
                f"{r.ins.threshold - 1} are needed"
            )
        if len(bundles) != BUNDLE_BYTES * len(senders):
            raise SecAggError("share bundles do not match their senders")
        held: dict[int, tuple[bytes, bytes]] = {r.ins.me: r.held[r.ins.me]}
        for i, sender in enumerate(senders):
            key = r.bundle_keys[sender]  # senders are among the peers (checked above)
            plain = open_sealed(
                key, bundles[BUNDLE_BYTES * i : BUNDLE_BYTES * (i + 1)], sender, r.ins.me, r.context
            )
            Share.from_bytes(plain[:SHARE_BYTES])  # refuse malformed shares now, not later
            Share.from_bytes(plain[SHARE_BYTES:])
            held[sender] = (plain[:SHARE_BYTES], plain[SHARE_BYTES:])
        pair_seeds = {
            peer: pair_secret(r.mask.private, r.ins.me, r.peers[peer][1], peer, r.context, "mask")
            for peer in senders
        }
        ring = np.asarray(ring_vector)
        ring = ring if ring.dtype == word_dtype(bits) else ring.astype(np.uint64)
        masked = mask_words(ring, r.ins.me, r.self_seed, pair_seeds, bits, r.context)
        r.held, r.masked_with, r.step = held, frozenset(senders), MASKED
        return masked

    def unmask(self, round_: int, survivors: list[int], dropped: list[int]) -> bytes:
        """The self-mask seed share of each survivor and the mask-key share of each dropped
        neighbour; once per round, never both kinds for one peer."""
        r = self._expect(round_, MASKED, UNMASKED)
        me = r.ins.me
        if me in dropped or me not in survivors:
            raise SecAggError(f"site {me} sent its masked input: it is a survivor")
        named = set(survivors) | set(dropped)
        if set(survivors) & set(dropped):
            raise SecAggError("a peer named both survivor and dropped: refused")
        stray = named - set(r.held)
        if stray:
            raise SecAggError(f"site {min(stray)} did not share its secrets with this site")
        gone = set(dropped) - r.masked_with
        if gone:
            raise SecAggError(f"site {min(gone)} was not masked with: nothing of it to rebuild")
        if len(survivors) < r.ins.threshold:
            raise SecAggError(
                f"only {len(survivors)} of this site's share holders survive (itself "
                f"included), fewer than the threshold {r.ins.threshold}: refusing to unmask"
            )
        r.step = UNMASKED  # whatever happens next, this round gets no second answer
        out = bytearray()
        for peer in survivors:
            out += r.held[peer][0]
        for peer in dropped:
            out += r.held[peer][1]
        return bytes(out)

    def settings(self, round_: int) -> KeysIns:
        """The keys request of the round waiting for its masked input (its encoding)."""
        return self._expect(round_, SHARED, MASKED).ins

    # -- helpers ---------------------------------------------------------------------------
    def _expect(self, round_: int, before: str, step: str) -> _Round:
        r = self._round
        if r is None:
            raise SecAggError(f"{step} step for round {round_} refused: no keys step yet")
        if round_ != r.ins.round:
            raise SecAggError(
                f"{step} step for round {round_} refused: this site is in round {r.ins.round}"
            )
        if r.step != before:
            raise SecAggError(
                f"{step} step for round {round_} refused: expected after the {before} step, "
                f"this site has done the {r.step} step"
            )
        return r


def encode_weighted(
    update: np.ndarray, num_examples: int, ins: KeysIns, rng: UniformSource
) -> np.ndarray:
    """A float update as a ring vector in the ring's machine word (``word_dtype``): w *
    update, then w * clip as one more coordinate (w = min(n, cap) / cap in [0, 1], so it is
    never clipped), so the server divides the sum of the first part by the sum of the last
    (``decode_weighted``)."""
    weight = min(max(num_examples, 0), ins.weight_cap) / ins.weight_cap
    ring = FixedPoint(ins.clip, ins.scale, ins.bits)
    update = np.asarray(update)
    if update.ndim != 1:
        raise SecAggError(f"update must be a 1-D vector, got shape {update.shape}")
    words = np.empty(update.size + 1, dtype=word_dtype(ins.bits))  # the words to be masked
    ring.encode(update, rng, weight=weight, out=words[:-1])
    ring.encode(np.array([weight * ins.clip]), rng, out=words[-1:])
    return words
