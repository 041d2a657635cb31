"""Masks in Z_(2^b) expanded from 32-byte seeds by ChaCha20, and their cancellation.

A site i sends y_i = x_i + PRG(b_i) + sum_{j in N(i)} sign(i, j) PRG(s_ij) mod 2^b, where
b_i is its self-mask seed, s_ij the seed it agreed with neighbour j, and sign(i, j) = +1 if
i < j else -1. Each pairwise mask is added by the lower id and subtracted by the higher, so
in the sum over all sites they cancel; the server then removes the survivors' self masks
(seeds rebuilt from shares) and, for a site that dropped after the pair masks were agreed,
the survivors' halves of its pairwise masks (seeds rebuilt from its shared private key).

Why ChaCha20 and not NumPy's generators: a mask must be unpredictable to anyone without the
seed, and NumPy's PCG64 or Mersenne Twister state is recoverable from its outputs. Flower
squeezes its 256-bit keys into 32-bit Mersenne Twister seeds, which a server can brute-force.
Here the full 32-byte seed goes through HKDF-SHA256 (info naming the job, round, purpose and
pair), and the derived key drives ChaCha20 with a zero nonce: each derived key is used for
one stream only, so the fixed nonce is never reused under a key. The keystream bytes become
uint64 (or uint32 when b <= 32, half the bytes) through ``numpy.frombuffer``, masked to b bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consortia.secagg.context import RoundContext, SecAggError, check_site_id

SEED_BYTES = 32
CHUNK_VALUES = 1 << 20  # values expanded per keystream call: bounds the temporary memory
MAX_LENGTH = 1 << 31  # 2^31 * 8 bytes = 16 GiB, far inside ChaCha20's 256 GiB per nonce
_NONCE = bytes(16)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64:
        raise SecAggError(f"bits must be an int in [1, 64], got {bits!r}")
    return bits


def _ring_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _check_seed(seed: bytes, what: str) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise SecAggError(f"{what} must be {SEED_BYTES} bytes")
    return bytes(seed)


def _stream(seed: bytes, label: bytes) -> CipherContext:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(seed)
    return Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()


def _add_stream(
    acc: np.ndarray, seed: bytes, label: bytes, bits: int, subtract: bool = False
) -> None:
    """acc (+/-)= the mask expanded from ``seed`` under ``label``, in place, mod 2^b."""
    dtype = np.uint32 if bits <= 32 else np.uint64
    width = np.dtype(dtype).itemsize
    encryptor = _stream(seed, label)
    zeros = bytes(width * min(CHUNK_VALUES, acc.size))
    mask = _ring_mask(bits)
    for start in range(0, acc.size, CHUNK_VALUES):
        n = min(CHUNK_VALUES, acc.size - start)
        values = np.frombuffer(encryptor.update(zeros[: width * n]), dtype=dtype)
        part = acc[start : start + n]
        if subtract:
            part -= values  # uint64 wraps modulo 2^64, which 2^b divides
        else:
            part += values
        part &= mask


def expand(seed: bytes, length: int, bits: int, label: bytes) -> np.ndarray:
    """``length`` uniform values in [0, 2^b) from ``seed``: the mask itself, as uint64."""
    _check_bits(bits)
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise SecAggError(f"mask length must be an int in [0, {MAX_LENGTH}], got {length!r}")
    out = np.zeros(length, dtype=np.uint64)
    _add_stream(out, _check_seed(seed, "mask seed"), label, bits)
    return out


def self_label(context: RoundContext, site: int) -> bytes:
    return context.label("self-mask", site)


def pair_label(context: RoundContext, a: int, b: int) -> bytes:
    low, high = sorted((check_site_id(a), check_site_id(b)))
    if low == high:
        raise SecAggError(f"a pairwise mask needs two distinct sites, got {a} twice")
    return context.label("pair-mask", low, high)


def _check_ring_vector(values: np.ndarray, bits: int, what: str) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 1 or v.dtype != np.uint64:
        raise SecAggError(f"{what} must be a 1-D uint64 vector, got {v.dtype} {v.shape}")
    if bits < 64 and v.size and int(v.max()) >> bits:
        raise SecAggError(f"{what} has values outside Z_(2^{bits})")
    return v


def mask_input(
    encoded: np.ndarray,
    site: int,
    self_seed: bytes,
    pair_seeds: Mapping[int, bytes],
    bits: int,
    context: RoundContext,
) -> np.ndarray:
    """What site ``site`` sends: its ring vector plus its self mask and signed pair masks."""
    site = check_site_id(site)
    out = _check_ring_vector(encoded, _check_bits(bits), "encoded input").copy()
    _add_stream(out, _check_seed(self_seed, "self-mask seed"), self_label(context, site), bits)
    for peer, seed in pair_seeds.items():
        peer = check_site_id(peer, "neighbour id")
        label = pair_label(context, site, peer)
        _add_stream(
            out, _check_seed(seed, f"seed for pair ({site}, {peer})"), label, bits, peer < site
        )
    return out


def ring_sum(vectors: Iterable[np.ndarray], bits: int) -> np.ndarray:
    """The sum of ring vectors modulo 2^b (what the server adds up from masked inputs)."""
    mask = _ring_mask(_check_bits(bits))
    total: np.ndarray | None = None
    for v in vectors:
        v = _check_ring_vector(v, bits, "masked input")
        if total is None:
            total = v.copy()
        elif v.shape != total.shape:
            raise SecAggError(f"masked input shape {v.shape} != {total.shape}")
        else:
            total += v
            total &= mask
    if total is None:
        raise SecAggError("ring_sum: no vectors")
    return total


def unmask_sum(
    masked_sum: np.ndarray,
    self_seeds: Mapping[int, bytes],
    dropped_pair_seeds: Mapping[tuple[int, int], bytes],
    bits: int,
    context: RoundContext,
) -> np.ndarray:
    """The survivors' plain sum from the sum of their masked inputs.

    ``self_seeds`` maps each survivor (whose input is in the sum) to its rebuilt self-mask
    seed; ``dropped_pair_seeds`` maps (survivor, dropped neighbour) to their pair seed,
    derived from the dropped site's rebuilt mask key. Pairs between two survivors cancel by
    themselves and must not be listed.
    """
    out = _check_ring_vector(masked_sum, _check_bits(bits), "masked sum").copy()
    for site, seed in self_seeds.items():
        site = check_site_id(site, "survivor id")
        _add_stream(
            out,
            _check_seed(seed, f"self-mask seed of {site}"),
            self_label(context, site),
            bits,
            True,
        )
    for (survivor, dropped), seed in dropped_pair_seeds.items():
        survivor = check_site_id(survivor, "survivor id")
        dropped = check_site_id(dropped, "dropped id")
        if survivor in self_seeds and dropped in self_seeds:
            raise SecAggError(f"pair ({survivor}, {dropped}) are both survivors: nothing to remove")
        label = pair_label(context, survivor, dropped)
        # the survivor added +mask if it is the lower id: remove it with the opposite sign
        _add_stream(
            out,
            _check_seed(seed, f"seed for pair ({survivor}, {dropped})"),
            label,
            bits,
            survivor < dropped,
        )
    return out
