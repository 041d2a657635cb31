"""Shamir sharing: any t shares rebuild, t - 1 reveal nothing, hostile shares are refused."""

import itertools
import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortia.secagg.context import SecAggError
from consortia.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    Share,
    combine,
    combine_int,
    split,
    split_int,
)


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    """Miller-Rabin with random bases: an independent check of the hard-coded prime."""
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    rng = random.Random(0)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_prime_and_holds_every_32_byte_secret() -> None:
    assert PRIME > 2**256
    assert _is_probable_prime(PRIME)
    assert not _is_probable_prime(PRIME + 2)  # the test can say no


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 30))
def test_any_t_shares_reconstruct(data: st.DataObject, n: int) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = split(secret, t, n)
    order = data.draw(st.permutations(shares))
    assert combine(order[: data.draw(st.integers(t, n))], t) == secret


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(2, 30))
def test_fewer_than_t_shares_are_refused(data: st.DataObject, n: int) -> None:
    t = data.draw(st.integers(2, n))
    shares = split(os.urandom(32), t, n)
    with pytest.raises(SecAggError, match=f"at least {t} shares"):
        combine(shares[: t - 1], t)


def _drawing(values: list[int]) -> Callable[[int], int]:
    """A ``randbelow`` that hands out the given coefficients in order."""
    it = iter(values)
    return lambda _bound: next(it)


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    """Over GF(31), t = 3: for two fixed shares, each secret has exactly one polynomial."""
    p, t = 31, 3
    fixed = split_int(7, t, 5, prime=p, randbelow=random.Random(3).randrange)
    seen = fixed[1:3]  # what a coalition of t - 1 = 2 holders sees
    for secret in range(p):
        matches = 0
        for a1, a2 in itertools.product(range(p), repeat=2):
            shares = split_int(secret, t, 5, prime=p, randbelow=_drawing([a1, a2]))
            matches += shares[1:3] == seen
        assert matches == 1, secret


def test_duplicate_and_tampered_shares_are_refused() -> None:
    shares = split(os.urandom(32), 3, 5)
    with pytest.raises(SecAggError, match="duplicate"):
        combine([shares[0], shares[0], shares[1]], 3)
    forged = Share(shares[4].x, (shares[4].y + 1) % PRIME)
    with pytest.raises(SecAggError, match="inconsistent"):
        combine([*shares[:4], forged], 3)
    # with exactly t shares a forged one cannot be detected, but must not yield the secret
    other = combine([*shares[:2], forged], 3)
    assert other != combine(shares[:3], 3)


def test_share_bytes_round_trip_and_hostile_bytes_are_refused() -> None:
    share = split(os.urandom(32), 2, 3)[2]
    raw = share.to_bytes()
    assert len(raw) == SHARE_BYTES and Share.from_bytes(raw) == share
    with pytest.raises(SecAggError, match="bytes"):
        Share.from_bytes(raw[:-1])
    with pytest.raises(SecAggError, match="x-coordinate"):
        Share.from_bytes(bytes(2) + raw[2:])
    with pytest.raises(SecAggError, match="field element"):
        Share.from_bytes(raw[:2] + PRIME.to_bytes(33, "big"))


def test_parameters_are_checked() -> None:
    with pytest.raises(SecAggError, match="threshold"):
        split(os.urandom(32), 0, 3)
    with pytest.raises(SecAggError, match="threshold"):
        split(os.urandom(32), 4, 3)
    with pytest.raises(SecAggError, match="32 bytes"):
        split(b"short", 2, 3)
    with pytest.raises(SecAggError, match="field element"):
        split_int(PRIME, 2, 3)


def test_a_reconstruction_outside_32_bytes_is_reported() -> None:
    shares = split_int(PRIME - 1, 2, 2)  # a field element no 32-byte secret maps to
    assert combine_int(shares, 2) == PRIME - 1
    with pytest.raises(SecAggError, match="corrupted"):
        combine(shares, 2)
