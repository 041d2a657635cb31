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
one stream only, so the fixed nonce is never reused under a key. The keystream is written
into a reused buffer of uint64 words (uint32 when b <= 32, half the bytes) and added in
place; the words are reduced to b bits once, at the end.
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


def word_dtype(bits: int) -> np.dtype:
    """The machine word masks are added in: uint32 when b <= 32 (half the keystream and
    memory traffic of uint64), else uint64. Both wrap modulo 2^32 or 2^64, which 2^b
    divides, so a sum reduced mod 2^b once at the end equals one reduced after every add."""
    return np.dtype(np.uint32 if bits <= 32 else np.uint64)


class _Accumulator:
    """A vector of ring words that masks are added to and subtracted from in place.

    Why a class: a site adds k + 1 masks and the server removes up to n, each as long as the
    model. The keystream goes straight into one reused buffer (``update_into``), never into
    a fresh bytes object per mask, and the words are reduced mod 2^b once, in ``result``.
    """

    def __init__(self, start: np.ndarray, bits: int) -> None:
        self.bits = bits
        self.words = start.astype(word_dtype(bits))  # a copy: the caller's vector is kept
        chunk = min(CHUNK_VALUES, max(1, self.words.size))
        self._zeros = bytes(self.words.itemsize * chunk)
        self._buffer = np.empty(chunk, dtype=self.words.dtype)

    def add(self, seed: bytes, label: bytes, subtract: bool = False) -> None:
        """words (+/-)= the mask expanded from ``seed`` under ``label``."""
        encryptor = _stream(seed, label)
        words, buffer = self.words, self._buffer
        for start in range(0, words.size, buffer.size):
            n = min(buffer.size, words.size - start)
            values = buffer[:n]
            encryptor.update_into(self._zeros[: n * words.itemsize], values.view(np.uint8).data)
            if subtract:
                np.subtract(words[start : start + n], values, out=words[start : start + n])
            else:
                np.add(words[start : start + n], values, out=words[start : start + n])

    def result(self) -> np.ndarray:
        """The words reduced mod 2^b, as uint64 (the ring's common currency)."""
        return self.reduced().astype(np.uint64)

    def reduced(self) -> np.ndarray:
        """The words themselves, reduced mod 2^b in place."""
        if self.bits < 8 * self.words.itemsize:
            self.words &= self.words.dtype.type((1 << self.bits) - 1)
        return self.words


def expand(seed: bytes, length: int, bits: int, label: bytes) -> np.ndarray:
    """``length`` uniform values in [0, 2^b) from ``seed``: the mask itself, as uint64."""
    _check_bits(bits)
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise SecAggError(f"mask length must be an int in [0, {MAX_LENGTH}], got {length!r}")
    acc = _Accumulator(np.zeros(length, dtype=np.uint64), bits)
    acc.add(_check_seed(seed, "mask seed"), label)
    return acc.result()


def self_label(context: RoundContext, site: int) -> bytes:
    return context.label("self-mask", site)


def pair_label(context: RoundContext, a: int, b: int) -> bytes:
    low, high = sorted((check_site_id(a), check_site_id(b)))
    if low == high:
        raise SecAggError(f"a pairwise mask needs two distinct sites, got {a} twice")
    return context.label("pair-mask", low, high)


def _check_ring_vector(values: np.ndarray, bits: int, what: str, words: bool = False) -> np.ndarray:
    """A 1-D uint64 vector of ring elements (or, with ``words``, the ring's machine word)."""
    v = np.asarray(values)
    allowed = {np.dtype(np.uint64), word_dtype(bits)} if words else {np.dtype(np.uint64)}
    if v.ndim != 1 or v.dtype not in allowed:
        names = " or ".join(sorted(str(a) for a in allowed))
        raise SecAggError(f"{what} must be a 1-D {names} vector, got {v.dtype} {v.shape}")
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
    return mask_words(encoded, site, self_seed, pair_seeds, bits, context).astype(np.uint64)


def mask_words(
    encoded: np.ndarray,
    site: int,
    self_seed: bytes,
    pair_seeds: Mapping[int, bytes],
    bits: int,
    context: RoundContext,
) -> np.ndarray:
    """``mask_input`` in the ring's machine word (``word_dtype``): what travels, uncopied.
    ``encoded`` may be uint64 or already in that word."""
    site = check_site_id(site)
    encoded = _check_ring_vector(encoded, _check_bits(bits), "encoded input", words=True)
    acc = _Accumulator(encoded, bits)
    acc.add(_check_seed(self_seed, "self-mask seed"), self_label(context, site))
    for peer, seed in pair_seeds.items():
        peer = check_site_id(peer, "neighbour id")
        label = pair_label(context, site, peer)
        acc.add(_check_seed(seed, f"seed for pair ({site}, {peer})"), label, peer < site)
    return acc.reduced()


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
    acc = _Accumulator(_check_ring_vector(masked_sum, _check_bits(bits), "masked sum"), bits)
    for site, seed in self_seeds.items():
        site = check_site_id(site, "survivor id")
        acc.add(_check_seed(seed, f"self-mask seed of {site}"), self_label(context, site), True)
    for (survivor, dropped), seed in dropped_pair_seeds.items():
        survivor = check_site_id(survivor, "survivor id")
        dropped = check_site_id(dropped, "dropped id")
        if survivor in self_seeds and dropped in self_seeds:
            raise SecAggError(f"pair ({survivor}, {dropped}) are both survivors: nothing to remove")
        label = pair_label(context, survivor, dropped)
        # the survivor added +mask if it is the lower id: remove it with the opposite sign
        acc.add(
            _check_seed(seed, f"seed for pair ({survivor}, {dropped})"), label, survivor < dropped
        )
    return acc.result()
