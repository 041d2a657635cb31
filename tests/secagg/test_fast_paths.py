"""The faster paths a site and the server take give exactly what the general functions give:
a site's own neighbours, masks added in 32-bit words, encoding into those words with the
weight applied per slice, and Shamir reconstruction from more shares than the threshold."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortia.secagg import encoding, shamir
from consortia.secagg.context import RoundContext, SecAggError
from consortia.secagg.encoding import FixedPoint
from consortia.secagg.masking import mask_input, mask_words, word_dtype
from consortia.secagg.neighbours import neighbours, neighbours_of

CTX = RoundContext("fast", 3)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 40), data=st.data())
def test_a_sites_own_neighbours_are_its_row_of_the_whole_graph(n: int, data: st.DataObject) -> None:
    k = data.draw(st.sampled_from([n - 1, *range(2, n - 1, 2)]))
    seed = data.draw(st.binary(min_size=32, max_size=32))
    sites = list(range(1, n + 1))
    graph = neighbours(sites, k, seed)
    for site in sites:
        assert neighbours_of(sites, k, seed, site) == graph[site]
    with pytest.raises(SecAggError, match="not among"):
        neighbours_of(sites, k, seed, n + 1)


@pytest.mark.parametrize("bits", [20, 32, 40])
def test_masking_in_words_equals_masking_in_uint64(bits: int) -> None:
    rng = np.random.default_rng(bits)
    x = rng.integers(0, 2**bits, 5000, dtype=np.uint64)
    seed, pairs = os.urandom(32), {2: os.urandom(32), 9: os.urandom(32)}
    wide = mask_input(x, 5, seed, pairs, bits, CTX)
    words = mask_words(x.astype(word_dtype(bits)), 5, seed, pairs, bits, CTX)
    assert words.dtype == word_dtype(bits)
    np.testing.assert_array_equal(words.astype(np.uint64), wide)
    assert int(wide.max()) < 2**bits and not np.array_equal(wide, x)
    with pytest.raises(SecAggError, match="uint64"):  # a float vector is still refused
        mask_words(x.astype(np.float64), 5, seed, pairs, bits, CTX)


def test_encoding_with_a_weight_into_words_equals_encoding_the_weighted_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoding, "CHUNK_VALUES", 1000)  # several slices, one short
    fp = FixedPoint(1.0, 2.0**20, 32)
    update = np.random.default_rng(0).normal(0, 0.5, 4321).astype(np.float32)
    expected = fp.encode(update.astype(np.float64) * 0.3, np.random.default_rng(7))
    out = np.empty(update.size, np.uint32)
    got = fp.encode(update, np.random.default_rng(7), weight=0.3, out=out)
    assert got is out
    np.testing.assert_array_equal(out.astype(np.uint64), expected)
    weighted = np.clip(update.astype(np.float64) * 0.3, -1, 1)
    assert np.abs(out / fp.scale - 1.0 - weighted).max() < 1 / fp.scale
    with pytest.raises(SecAggError, match="unsigned"):
        fp.encode(update, np.random.default_rng(7), out=np.empty(update.size, np.uint16))
    with pytest.raises(SecAggError, match="non-finite values, first at index 2500"):
        bad = update.copy()
        bad[2500] = np.inf
        fp.encode(bad, np.random.default_rng(7), weight=0.3, out=out)


def test_reconstruction_from_extra_shares_checks_each_and_finds_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 12, 23)
    assert shamir.combine(shares, 12) == secret
    assert shamir.combine(shares[5:17], 12) == secret
    bad = list(shares)
    bad[20] = shamir.Share(bad[20].x, (bad[20].y + 1) % shamir.PRIME)
    with pytest.raises(SecAggError, match="inconsistent"):
        shamir.combine(bad, 12)
