"""secagg_core: the cost of SecAgg+'s pure-function core on one site and on the server.

Usage: ``python bench/secagg_core.py [--reps 3] [--sizes 100000 10000000] [--k 10]
[--json OUT]``.

For each update size d and k neighbours, the best of ``--reps`` wall-clock times of:

- ``mask``: a site masks its encoded update: one self mask and k signed pairwise masks,
  each expanded from its 32-byte seed by HKDF + ChaCha20 (this dominates a site's cost);
- ``agree``: the site's k X25519 agreements + HKDF for the pair mask seeds;
- ``share``: Shamir-sharing its two 32-byte secrets t-of-k (t = k/2 + 1);
- ``unmask_dropout``: the server rebuilds one dropped site's mask key from t shares,
  re-derives its k pair seeds and removes the survivors' halves of its masks;
- ``unmask_self``: the server rebuilds one survivor's self seed and removes its self mask.

Each result is checked: the masked input of a lone site, with its masks removed, is its
input again. Figures are for this machine; there are no targets for the core alone (the
issue's targets are for whole rounds, in a later bench/secagg.py).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from consortia.secagg import shamir
from consortia.secagg.context import RoundContext
from consortia.secagg.keys import KeyPair, pair_secret
from consortia.secagg.masking import mask_input, unmask_sum

CTX = RoundContext("bench", 1)


def best_of(reps: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(d: int, k: int, bits: int, reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    site, peers = 0, list(range(1, k + 1))
    me = KeyPair.generate()
    others = {j: KeyPair.generate() for j in peers}
    self_seed = rng.bytes(32)
    x = rng.integers(0, 2**bits, d, dtype=np.uint64)
    t = k // 2 + 1

    t_agree, seeds = best_of(
        reps,
        lambda: {j: pair_secret(me.private, site, others[j].public, j, CTX, "mask") for j in peers},
    )
    t_mask, masked = best_of(reps, lambda: mask_input(x, site, self_seed, seeds, bits, CTX))
    t_share, (key_shares, seed_shares) = best_of(
        reps,
        lambda: (shamir.split(me.private_bytes(), t, k), shamir.split(self_seed, t, k)),
    )

    # the server's work if site 0 dropped: rebuild its key, re-derive its k pair seeds and
    # remove each survivor's half of those pair masks (the negatives of site 0's halves)
    def unmask_dropout() -> np.ndarray:
        key = KeyPair.from_private_bytes(shamir.combine(key_shares[:t], t))
        pairs = {
            (j, site): pair_secret(key.private, site, others[j].public, j, CTX, "mask")
            for j in peers
        }
        return unmask_sum(masked, {}, pairs, bits, CTX)

    def unmask_self(partial: np.ndarray) -> np.ndarray:
        return unmask_sum(partial, {site: shamir.combine(seed_shares[:t], t)}, {}, bits, CTX)

    t_drop, partial = best_of(reps, unmask_dropout)
    t_self, _ = best_of(reps, lambda: unmask_self(partial))
    # check: partial = masked + P (P: site 0's own pair halves), masked = x + S + P,
    # so 2 masked - partial = x + S, and removing the self mask S must give x exactly
    ring = np.uint64((1 << bits) - 1)
    assert np.array_equal(unmask_self((2 * masked - partial) & ring), x), "masks did not come off"
    return {
        "d": d,
        "k": k,
        "bits": bits,
        "agree_s": t_agree,
        "mask_s": t_mask,
        "share_s": t_share,
        "unmask_dropout_s": t_drop,
        "unmask_self_s": t_self,
        "mask_MB_per_s": (k + 1) * d * (4 if bits <= 32 else 8) / t_mask / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 62])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [run(d, args.k, b, args.reps) for d in args.sizes for b in args.bits]
    print(
        f"{'d':>10} {'bits':>4} {'agree':>8} {'mask':>8} {'share':>8} {'unmask-drop':>11} "
        f"{'unmask-self':>11} {'keystream MB/s':>14}"
    )
    for r in rows:
        print(
            f"{r['d']:>10} {r['bits']:>4} {r['agree_s'] * 1e3:>6.2f}ms {r['mask_s']:>7.3f}s "
            f"{r['share_s'] * 1e3:>6.2f}ms {r['unmask_dropout_s']:>10.3f}s "
            f"{r['unmask_self_s']:>10.3f}s {r['mask_MB_per_s']:>14.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
