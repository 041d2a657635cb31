"""Privacy noise from a cryptographically secure generator (ChaCha20 keystream).

Why not NumPy's ``PCG64`` (or ``random``/``Mersenne Twister``)? Those generators are built
for statistical quality and speed, not unpredictability: PCG64's whole 128-bit state can be
recovered from a modest number of outputs, after which every past and future draw is known.
DP noise whose values can be predicted or reconstructed can be subtracted from a released
sum, which voids the guarantee. ChaCha20 is a stream cipher: without the 256-bit key its
keystream is indistinguishable from random, so it is a CSPRNG. The key comes from
``os.urandom`` in deployment; tests and debug runs pass ``seed`` and get a key derived
deterministically from it (never use a seed when privacy matters).

Floating-point caveat (Mironov 2012): textbook float Laplace/Gaussian sampling leaves gaps in
the low-order bits. We draw 53-bit uniforms, which is the standard practice of DP libraries
that release float results (TensorFlow Privacy, Opacus). Integer releases use integer
samplers instead: the discrete Gaussian (distributed DP, Gaussian analytics counts) and the
exact discrete Laplace of Canonne, Kamath and Steinke 2020 (Laplace analytics counts).
"""

from __future__ import annotations

import hashlib
import math
import os
from fractions import Fraction
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from consortia.core.errors import ConfigError

# ChaCha20 in ``cryptography`` takes a 16-byte nonce whose first 4 bytes are the block
# counter: 2**32 blocks of 64 bytes = 256 GiB per nonce. We move to a fresh nonce well before.
_BYTES_PER_NONCE = 1 << 36
_CHUNK_VALUES = 1 << 22  # uniforms drawn per keystream call: bounds peak memory


class UniformSource(Protocol):
    """Anything that can give uniforms in [0, 1): ``SecureRng`` or ``numpy.random.Generator``."""

    def random(self, size: int) -> np.ndarray:  # pragma: no cover - protocol
        """Return ``size`` float64 uniforms in [0, 1)."""
        ...


class SecureRng:
    """Vectorised uniforms, Gaussians, Laplace and discrete Gaussians from ChaCha20.

    ``SecureRng()`` is keyed from ``os.urandom``; ``SecureRng(seed=7)`` is reproducible and is
    for tests and debugging only (``seeded`` tells callers which one they hold).
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            key = os.urandom(32)
        else:
            if not isinstance(seed, int) or seed < 0:
                raise ConfigError(f"rng seed must be a non-negative int, got {seed!r}")
            key = hashlib.sha256(b"consortia.privacy.rng/v1:" + str(seed).encode()).digest()
        self._key = key
        self.seeded = seed is not None
        self._nonce_index = 0
        self._bytes_left = 0
        self._encryptor = self._new_encryptor()

    def _new_encryptor(self):  # type: ignore[no-untyped-def]
        nonce = b"\x00\x00\x00\x00" + self._nonce_index.to_bytes(12, "little")
        self._nonce_index += 1
        self._bytes_left = _BYTES_PER_NONCE
        return Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` keystream bytes (encrypting zeros yields the raw keystream)."""
        out = bytearray(n)
        self._fill(memoryview(out))
        return bytes(out)

    def _fill(self, out: memoryview) -> None:
        """Write keystream bytes over ``out`` in place: no intermediate bytes objects, which
        for a model-sized draw cost more than the cipher itself."""
        zeros = bytes(min(len(out), _CHUNK_VALUES * 8))
        done = 0
        while done < len(out):
            if self._bytes_left == 0:
                self._encryptor = self._new_encryptor()
            take = min(len(out) - done, self._bytes_left, len(zeros))
            self._encryptor.update_into(zeros[:take], out[done : done + take])
            self._bytes_left -= take
            done += take

    def _uint64(self, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.uint64)
        self._fill(out.view(np.uint8).data)
        return out

    def random(self, size: int) -> np.ndarray:
        """Uniforms in [0, 1) with 53 random bits each."""
        size = _check_size(size)
        out = np.empty(size, dtype=np.float64)
        for start in range(0, size, _CHUNK_VALUES):
            part = out[start : start + _CHUNK_VALUES]
            # The keystream words go straight into the output's memory and become floats in
            # place: a second model-sized buffer alive at the same time costs fresh pages
            # (page faults) on every call, several times the cipher's own time.
            self._fill(part.view(np.uint8).data)
            words = part.view(np.uint64)
            words >>= np.uint64(11)
            # as int64 (53-bit values fit): NumPy converts int64 to float64 fast, uint64 not
            np.multiply(words.view(np.int64), 2.0**-53, out=part)
        return out

    def _open_uniform(self, size: int) -> np.ndarray:
        """Uniforms in (0, 1): the half-step offset keeps ``log(u)`` finite."""
        return self.random(size) + 2.0**-54

    def integers(self, high: int, size: int) -> np.ndarray:
        """Uniform integers in [0, high) (``high`` <= 2**53; bias below 2**-53 * high)."""
        if not 0 < high <= 2**53:
            raise ConfigError(f"integers: high must be in (0, 2**53], got {high}")
        return np.floor(self.random(size) * high).astype(np.int64)

    def randbelow(self, n: int) -> int:
        """One exactly uniform integer in [0, n), any size of ``n``, by rejection.

        ``integers`` maps 53-bit floats and is slightly biased; the exact samplers below
        need exact uniforms, as Canonne, Kamath and Steinke (2020) assume.
        """
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"randbelow: n must be an int >= 1, got {n!r}")
        bits = (n - 1).bit_length()
        nbytes = max(1, (bits + 7) // 8)
        while True:
            value = int.from_bytes(self.random_bytes(nbytes), "little") >> (8 * nbytes - bits)
            if value < n:
                return value

    def bernoulli(self, p: Fraction) -> bool:
        """Exact Bernoulli(p) for a rational 0 <= p <= 1."""
        return self.randbelow(p.denominator) < p.numerator

    def bernoulli_exp(self, gamma: Fraction) -> bool:
        """Exact Bernoulli(exp(-gamma)) for a rational gamma >= 0 (CKS 2020, Algorithm 1)."""
        if gamma < 0:
            raise ConfigError(f"bernoulli_exp: gamma must be >= 0, got {gamma}")
        while gamma > 1:  # exp(-gamma) = exp(-1)**floor(gamma) * exp(-(gamma - floor(gamma)))
            if not self.bernoulli_exp(Fraction(1)):
                return False
            gamma -= 1
        k = 1
        while self.bernoulli(gamma / k):
            k += 1
        return k % 2 == 1

    def discrete_laplace_exact(self, size: int, scale: Fraction) -> np.ndarray:
        """Discrete Laplace Lap_Z(t): P(x) proportional to exp(-|x| / t), t = ``scale``.

        Canonne, Kamath and Steinke 2020, Algorithm 2, exactly: rational arithmetic and exact
        uniform integers throughout, so no floating-point gap (Mironov 2012) can leak the
        noise. One value at a time in Python (a few microseconds each): it is for analytics
        releases of counts and histograms, not for model-sized vectors.
        """
        size = _check_size(size)
        t = Fraction(scale)
        if t <= 0:
            raise ConfigError(f"discrete Laplace scale must be > 0, got {scale}")
        # The algorithm samples Lap_Z(t / s) for integers t, s: the scale's own fraction.
        out = np.empty(size, dtype=np.int64)
        for i in range(size):
            out[i] = self._one_discrete_laplace(t.denominator, t.numerator)
        return out

    def _one_discrete_laplace(self, s: int, t: int) -> int:
        """One draw of Lap_Z(t / s) for positive integers s, t (CKS 2020, Algorithm 2)."""
        while True:
            u = self.randbelow(t)
            if not self.bernoulli_exp(Fraction(u, t)):
                continue
            v = 0
            while self.bernoulli_exp(Fraction(1)):
                v += 1
            y = (u + t * v) // s
            negative = self.randbelow(2) == 1
            if negative and y == 0:
                continue
            return -y if negative else y

    def normal(self, size: int, std: float = 1.0) -> np.ndarray:
        """Gaussian N(0, std**2) by Box-Muller (two normals per pair of uniforms)."""
        size = _check_size(size)
        _check_scale("std", std)
        half = (size + 1) // 2
        u1 = self._open_uniform(half)
        u2 = self.random(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * math.pi * u2
        out = np.empty(2 * half, dtype=np.float64)
        out[0::2] = radius * np.cos(angle)
        out[1::2] = radius * np.sin(angle)
        out = out[:size]
        out *= std
        return out

    def laplace(self, size: int, scale: float = 1.0) -> np.ndarray:
        """Laplace(0, scale) by inverting the CDF."""
        size = _check_size(size)
        _check_scale("scale", scale)
        u = self._open_uniform(size) - 0.5
        return -scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))

    def discrete_gaussian(self, size: int, sigma: float) -> np.ndarray:
        """Discrete Gaussian N_Z(0, sigma**2): P(x) proportional to exp(-x**2 / (2 sigma**2)).

        Rejection from the discrete Laplace with ``t = floor(sigma) + 1`` (Canonne, Kamath and
        Steinke 2020, Algorithm 3), vectorised: draw a batch of candidates, keep the accepted
        ones, repeat. The acceptance rate is above 0.5 for every sigma, so a few passes fill
        the output. Float arithmetic for the acceptance test, as in TensorFlow Federated's
        implementation of Kairouz et al. 2021.
        """
        size = _check_size(size)
        _check_scale("sigma", sigma)
        if sigma == 0:
            return np.zeros(size, dtype=np.int64)
        t = math.floor(sigma) + 1
        out = np.empty(size, dtype=np.int64)
        filled = 0
        while filled < size:
            n = max(int((size - filled) * 1.6), 64)
            # Difference of two geometrics (floor of exponentials) is discrete Laplace(t).
            g1 = np.floor(-t * np.log(self._open_uniform(n)))
            g2 = np.floor(-t * np.log(self._open_uniform(n)))
            y = g1 - g2
            accept_p = np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2.0 * sigma**2))
            keep = y[self.random(n) < accept_p][: size - filled]
            out[filled : filled + keep.size] = keep.astype(np.int64)
            filled += keep.size
        return out


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < 0:
        raise ConfigError(f"size must be a non-negative int, got {size!r}")
    return int(size)


def _check_scale(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
