"""t-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

SecAgg+ shares two 32-byte secrets per site among its neighbours: the self-mask seed and the
X25519 private mask key, so that the server can remove a survivor's self mask, or rebuild a
dropped site's pairwise masks, from any t neighbours' shares, while t - 1 shares (even
together with the server's view) reveal nothing: for any t - 1 points and any secret there
is exactly one polynomial of degree < t through them, so every secret is equally likely.

Why p = 2^256 + 297, the smallest prime above 2^256? Every 32-byte string is then a field
element as it stands, so a secret is shared in one polynomial rather than split into chunks
(2^255 - 19 would drop one bit of each key). A share is (x, y) with y in [0, p): serialised as
2 bytes of x and 33 bytes of y, fixed length.

Reconstruction is Lagrange interpolation at 0 with Python's exact integers, in barycentric
form (one modular inversion per secret, O(t) products per point): t is of order log n
(tens), so a share or a combine takes tens of microseconds. With
more than t shares, the extra ones are checked against the polynomial the first t define, so
a tampered share is reported instead of silently giving a wrong secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consortia.secagg.context import SecAggError

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
MAX_SHARES = (1 << 16) - 1  # x is serialised on 2 bytes
SHARE_BYTES = 2 + 33


@dataclass(frozen=True)
class Share:
    """One point (x, y) of the sharing polynomial; x in [1, 65535], y a field element."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(2, "big") + self.y.to_bytes(33, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Parse a share from untrusted bytes: wrong length, x = 0 or y >= p are refused."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != SHARE_BYTES:
            got = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
            raise SecAggError(f"a share is {SHARE_BYTES} bytes, got {got}")
        x, y = int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")
        _check_point(x, y, PRIME)
        return cls(x, y)


def _check_point(x: int, y: int, prime: int) -> None:
    if not 1 <= x < min(prime, MAX_SHARES + 1):
        raise SecAggError(
            f"share x-coordinate must be in [1, {min(prime - 1, MAX_SHARES)}], got {x}"
        )
    if not 0 <= y < prime:
        raise SecAggError(f"share value must be a field element below the prime (x = {x})")


def _check_threshold(threshold: int, n_shares: int, prime: int) -> None:
    for name, value in (("threshold", threshold), ("n_shares", n_shares)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SecAggError(f"{name} must be an int, got {value!r}")
    if not 1 <= threshold <= n_shares:
        raise SecAggError(f"threshold must be in [1, n_shares={n_shares}], got {threshold}")
    if n_shares > min(MAX_SHARES, prime - 1):
        raise SecAggError(f"n_shares must be at most {min(MAX_SHARES, prime - 1)}, got {n_shares}")


def _evaluate(coefficients: Sequence[int], x: int, prime: int) -> int:
    """Horner's rule: coefficients[0] is the constant term (the secret)."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % prime
    return acc


def split_int(
    secret: int,
    threshold: int,
    n_shares: int,
    prime: int = PRIME,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[Share]:
    """Shares at x = 1..n of a random polynomial of degree t - 1 with f(0) = ``secret``.

    ``randbelow`` draws the t - 1 random coefficients; it must be a CSPRNG outside tests.
    """
    _check_threshold(threshold, n_shares, prime)
    if not 0 <= secret < prime:
        raise SecAggError("secret must be a field element, in [0, prime)")
    coefficients = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x, prime)) for x in range(1, n_shares + 1)]


def _weights(points: Sequence[Share], prime: int) -> list[int]:
    """Barycentric weights w_i = 1 / prod_{j != i} (x_i - x_j), with one modular inversion
    for all of them (Montgomery's trick): the server rebuilds two secrets per site, each
    checked against every extra share, so per-point inversions would dominate its round."""
    dens = []
    for i, pi in enumerate(points):
        den = 1
        for j, pj in enumerate(points):
            if i != j:
                den *= pi.x - pj.x  # 16-bit factors: reduced once, after the product
        dens.append(den % prime)
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % prime)
    inverse = pow(prefix[-1], -1, prime)  # of the product of all denominators
    weights = [0] * len(dens)
    for i in range(len(dens) - 1, -1, -1):
        weights[i] = inverse * prefix[i] % prime
        inverse = inverse * dens[i] % prime
    return weights


def _lagrange_at(points: Sequence[Share], weights: Sequence[int], x: int, prime: int) -> int:
    """The value at ``x`` of the unique polynomial of degree < len(points) through them."""
    # prod_{j != i} (x - x_j) = (product over j < i) (product over j > i): O(t) per point
    diffs = [(x - p.x) % prime for p in points]
    suffix = [1] * (len(diffs) + 1)
    for i in range(len(diffs) - 1, -1, -1):
        suffix[i] = suffix[i + 1] * diffs[i] % prime
    total, prefix = 0, 1
    for i, pi in enumerate(points):
        total = (total + pi.y * weights[i] % prime * (prefix * suffix[i + 1] % prime)) % prime
        prefix = prefix * diffs[i] % prime
    return total


def combine_int(shares: Sequence[Share], threshold: int, prime: int = PRIME) -> int:
    """The secret f(0) from at least ``threshold`` shares with distinct x-coordinates."""
    shares = list(shares)
    _check_threshold(threshold, max(threshold, len(shares)), prime)
    if len(shares) < threshold:
        raise SecAggError(f"need at least {threshold} shares to reconstruct, got {len(shares)}")
    seen: set[int] = set()
    for share in shares:
        if not isinstance(share, Share):
            raise SecAggError(f"expected Share objects, got {type(share).__name__}")
        _check_point(share.x, share.y, prime)
        if share.x in seen:
            raise SecAggError(f"duplicate share x-coordinate {share.x}")
        seen.add(share.x)
    base = shares[:threshold]
    weights = _weights(base, prime)
    for extra in shares[threshold:]:
        if _lagrange_at(base, weights, extra.x, prime) != extra.y:
            raise SecAggError(f"share at x = {extra.x} is inconsistent with the others")
    return _lagrange_at(base, weights, 0, prime)


def split(secret: bytes, threshold: int, n_shares: int) -> list[Share]:
    """Share a 32-byte secret (a seed or an X25519 private key) t-of-n."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        raise SecAggError(f"secret must be {SECRET_BYTES} bytes")
    return split_int(int.from_bytes(secret, "big"), threshold, n_shares)


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` consistent shares."""
    value = combine_int(shares, threshold)
    if value >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("reconstructed value is not a 32-byte secret: shares are corrupted")
    return value.to_bytes(SECRET_BYTES, "big")
