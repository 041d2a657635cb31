"""The message kinds of secure aggregation's round steps, registered on both sides.

A round with secure aggregation runs four phases (docs/secure_aggregation.md):

1. ``secagg_keys``: the server tells each selected site its protocol id, the number of
   participants, k, t, the graph seed and the encoding; the site answers with two fresh
   X25519 public keys.
2. ``secagg_shares``: the server sends each site its neighbours' public keys (those that
   answered); the site answers with one sealed share bundle per neighbour, in their order.
3. ``fit`` with ``FitIns.secagg`` set: the bundles addressed to the site ride with the
   model; the site trains and answers with its masked input (core/messages.py).
4. ``secagg_unmask``: the server names which of the site's neighbours survived and which
   dropped; the site answers with one share per named peer, never both kinds for one peer.

Everything binary travels as uint8 arrays of fixed record sizes, so a transport knows every
reply's exact size from its request before it allocates anything (``reply_arrays``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from consortia.core.messages import InvalidMessageError, register_kind
from consortia.secagg.channel import NONCE_BYTES, TAG_BYTES
from consortia.secagg.keys import KEY_BYTES
from consortia.secagg.neighbours import GRAPH_SEED_BYTES
from consortia.secagg.shamir import MAX_SHARES, SHARE_BYTES

# A sealed bundle: nonce || AES-GCM(self-mask seed share || mask-key share) || tag.
BUNDLE_PLAIN_BYTES = 2 * SHARE_BYTES
BUNDLE_BYTES = NONCE_BYTES + BUNDLE_PLAIN_BYTES + TAG_BYTES
# Protocol ids are 1..n and Shamir x-coordinates are 2 bytes: at most this many per round.
MAX_PARTICIPANTS = MAX_SHARES
MAX_BITS = 62  # a ring element and a sum of two fit in uint64 without overflow
_HEX64 = re.compile(r"[0-9a-f]{64}")
_U8 = np.dtype(np.uint8)
_I64 = np.dtype(np.int64)


@dataclass(frozen=True)
class KeysIns:
    """Server -> site: this round's protocol parameters; ``weight_cap`` 0 means the site's
    reply is already a ring element (distributed DP), else the site encodes its float
    update weighted by min(examples, weight_cap) / weight_cap, with that weight appended."""

    round: int
    job: str
    me: int
    sites: int
    neighbours: int
    threshold: int
    graph_seed: str  # hex of 32 bytes: every site recomputes the graph from it
    bits: int
    clip: float = 0.0
    scale: float = 0.0
    weight_cap: int = 0


@dataclass(frozen=True)
class KeysRes:
    site: str
    round: int
    cipher_key: np.ndarray  # uint8[32]: X25519 public key for sealing share bundles
    mask_key: np.ndarray  # uint8[32]: X25519 public key for the pairwise masks


@dataclass(frozen=True)
class SharesIns:
    """The site's neighbours that advertised keys, ascending, with their two keys each."""

    round: int
    peers: np.ndarray  # int64[m]
    cipher_keys: np.ndarray  # uint8[32 m]
    mask_keys: np.ndarray  # uint8[32 m]


@dataclass(frozen=True)
class SharesRes:
    site: str
    round: int
    bundles: np.ndarray  # uint8[BUNDLE_BYTES m]: one sealed bundle per peer, in their order


@dataclass(frozen=True)
class UnmaskIns:
    """Which of the site's neighbours sent their masked input, and which dropped after
    the shares were delivered."""

    round: int
    survivors: np.ndarray  # int64[a]
    dropped: np.ndarray  # int64[b]


@dataclass(frozen=True)
class UnmaskRes:
    site: str
    round: int
    # SHARE_BYTES (a + b): the self-mask seed share of each survivor (the site's own among
    # them), then the mask-key share of each dropped peer, in the request's order.
    shares: np.ndarray


def as_array(raw: bytes) -> np.ndarray:
    """Bytes as the uint8 array they travel in (a copy: messages own their arrays)."""
    return np.frombuffer(raw, dtype=np.uint8).copy()


def _ids(values: np.ndarray, what: str, limit: int) -> list[int]:
    if not isinstance(values, np.ndarray) or values.dtype != _I64 or values.ndim != 1:
        raise InvalidMessageError(f"{what} must be a 1-D int64 array")
    ids = [int(v) for v in values]
    if any(not 1 <= v <= limit for v in ids) or ids != sorted(set(ids)):
        raise InvalidMessageError(f"{what} must be distinct ascending ids in 1..{limit}")
    return ids


def _bytes(values: np.ndarray, what: str, size: int) -> bytes:
    if not isinstance(values, np.ndarray) or values.dtype != _U8 or values.shape != (size,):
        raise InvalidMessageError(f"{what} must be {size} bytes (uint8)")
    return values.tobytes()


def _check_keys_request(ins: KeysIns) -> None:
    if not 2 <= ins.sites <= MAX_PARTICIPANTS or not 1 <= ins.me <= ins.sites:
        raise InvalidMessageError(
            f"secure aggregation: site id {ins.me} of {ins.sites} sites is out of range"
        )
    k, t = ins.neighbours, ins.threshold
    if not (2 <= k <= ins.sites - 1 and (k % 2 == 0 or k == ins.sites - 1)):
        raise InvalidMessageError(f"secure aggregation: {k} neighbours for {ins.sites} sites")
    if not (k + 1) / 2 < t <= k:
        # t <= (k + 1)/2 would let the shares honest holders give rebuild both secrets
        raise InvalidMessageError(
            f"secure aggregation: threshold {t} must be above (k + 1)/2 and at most k = {k}"
        )
    if not _HEX64.fullmatch(ins.graph_seed) or len(ins.job) > 256 or not ins.job:
        raise InvalidMessageError("secure aggregation: bad graph seed or job id")
    if not 1 <= ins.bits <= MAX_BITS:
        raise InvalidMessageError(f"secure aggregation: bits {ins.bits} not in 1..{MAX_BITS}")
    if ins.weight_cap < 0 or (
        ins.weight_cap
        and not (math.isfinite(ins.clip) and ins.clip > 0 and math.isfinite(ins.scale))
    ):
        raise InvalidMessageError("secure aggregation: bad encoding (clip, scale, weight cap)")


def _check_keys(reply: KeysRes, request: KeysIns) -> None:
    _bytes(reply.cipher_key, "cipher_key", KEY_BYTES)
    _bytes(reply.mask_key, "mask_key", KEY_BYTES)


def _check_shares_request(ins: SharesIns) -> None:
    m = len(_ids(ins.peers, "peers", MAX_PARTICIPANTS))
    _bytes(ins.cipher_keys, "cipher_keys", KEY_BYTES * m)
    _bytes(ins.mask_keys, "mask_keys", KEY_BYTES * m)


def _check_shares(reply: SharesRes, request: SharesIns) -> None:
    _bytes(reply.bundles, "bundles", BUNDLE_BYTES * int(request.peers.size))


def _check_unmask_request(ins: UnmaskIns) -> None:
    alive = _ids(ins.survivors, "survivors", MAX_PARTICIPANTS)
    gone = _ids(ins.dropped, "dropped", MAX_PARTICIPANTS)
    both = set(alive) & set(gone)
    if both:
        raise InvalidMessageError(
            f"secure aggregation: site {min(both)} is named both survivor and dropped"
        )


def _unmask_size(request: UnmaskIns) -> int:
    return SHARE_BYTES * (int(request.survivors.size) + int(request.dropped.size))


def _check_unmask(reply: UnmaskRes, request: UnmaskIns) -> None:
    _bytes(reply.shares, "shares", _unmask_size(request))


KEYS = register_kind(
    "secagg_keys",
    KeysIns,
    KeysRes,
    check=_check_keys,
    reply_arrays=lambda req: {"cipher_key": (KEY_BYTES, _U8), "mask_key": (KEY_BYTES, _U8)},
    check_request=_check_keys_request,
)
SHARES = register_kind(
    "secagg_shares",
    SharesIns,
    SharesRes,
    check=_check_shares,
    reply_arrays=lambda req: {"bundles": (BUNDLE_BYTES * int(req.peers.size), _U8)},
    check_request=_check_shares_request,
)
UNMASK = register_kind(
    "secagg_unmask",
    UnmaskIns,
    UnmaskRes,
    check=_check_unmask,
    reply_arrays=lambda req: {"shares": (_unmask_size(req), _U8)},
    check_request=_check_unmask_request,
)

__all__ = [
    "BUNDLE_BYTES",
    "GRAPH_SEED_BYTES",
    "KEYS",
    "SHARES",
    "UNMASK",
    "KeysIns",
    "KeysRes",
    "SharesIns",
    "SharesRes",
    "UnmaskIns",
    "UnmaskRes",
    "as_array",
]
