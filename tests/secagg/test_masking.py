"""Masks cancel, dropouts are recovered from shares, masked inputs look uniform."""

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scipy.stats import chisquare, kstest

from consortia.privacy.distributed import DistributedDiscreteGaussian, modular_sum
from consortia.privacy.rng import SecureRng
from consortia.secagg import masking, shamir
from consortia.secagg.context import RoundContext, SecAggError
from consortia.secagg.encoding import FixedPoint
from consortia.secagg.keys import KeyPair, pair_secret
from consortia.secagg.masking import expand, mask_input, pair_label, ring_sum, unmask_sum
from consortia.secagg.neighbours import neighbours

CTX = RoundContext("job-a", 3)


class Round:
    """Sites with mask keys and self seeds on a neighbour graph, as the protocol sets them up."""

    def __init__(self, n: int, k: int, t: int, seed: int = 0) -> None:
        # seeded so that every run draws the same keys: the uniformity test's p is then fixed
        rng = np.random.default_rng(seed)
        self.ids = list(range(10, 10 + n))
        self.graph = neighbours(self.ids, k, rng.bytes(32))
        self.keys = {i: KeyPair.from_private_bytes(rng.bytes(32)) for i in self.ids}
        self.self_seeds = {i: rng.bytes(32) for i in self.ids}
        self.t = t
        # each site shares its mask key and self seed among its neighbours (x by sorted order)
        self.key_shares = {i: self._share(i, self.keys[i].private_bytes()) for i in self.ids}
        self.seed_shares = {i: self._share(i, self.self_seeds[i]) for i in self.ids}

    def _share(self, site: int, secret: bytes) -> dict[int, shamir.Share]:
        holders = sorted(self.graph[site])
        return dict(zip(holders, shamir.split(secret, self.t, len(holders)), strict=True))

    def pair_seeds(self, i: int) -> dict[int, bytes]:
        return {
            j: pair_secret(self.keys[i].private, i, self.keys[j].public, j, CTX, "mask")
            for j in self.graph[i]
        }

    def masked(self, i: int, x: np.ndarray, bits: int) -> np.ndarray:
        return mask_input(x, i, self.self_seeds[i], self.pair_seeds(i), bits, CTX)

    def recover(self, masked_sum: np.ndarray, survivors: list[int], bits: int) -> np.ndarray:
        """The server's unmasking, from the shares survivors hand over (t of each)."""
        alive = set(survivors)
        self_seeds = {}
        for s in survivors:
            held = [sh for holder, sh in self.seed_shares[s].items() if holder in alive]
            self_seeds[s] = shamir.combine(held[: self.t], self.t)
        pairs = {}
        for d in set(self.ids) - alive:
            held = [sh for holder, sh in self.key_shares[d].items() if holder in alive]
            key = KeyPair.from_private_bytes(shamir.combine(held[: self.t], self.t))
            for s in self.graph[d] & alive:
                pairs[(s, d)] = pair_secret(key.private, d, self.keys[s].public, s, CTX, "mask")
        return unmask_sum(masked_sum, self_seeds, pairs, bits, CTX)


@pytest.mark.parametrize("bits", [20, 32, 33, 62, 64])
def test_pairwise_masks_cancel_exactly(bits: int) -> None:
    rnd = Round(n=9, k=4, t=3)
    rng = np.random.default_rng(bits)
    plain = [rng.integers(0, 2**bits, 1000, dtype=np.uint64, endpoint=False) for _ in rnd.ids]
    masked = [rnd.masked(i, x, bits) for i, x in zip(rnd.ids, plain, strict=True)]
    total = ring_sum(masked, bits)
    assert not np.array_equal(total, ring_sum(plain, bits))  # the self masks remain
    self_only = ring_sum(
        [expand(rnd.self_seeds[i], 1000, bits, CTX.label("self-mask", i)) for i in rnd.ids], bits
    )
    ring = np.uint64((1 << bits) - 1)
    np.testing.assert_array_equal((total - self_only) & ring, ring_sum(plain, bits))
    np.testing.assert_array_equal(rnd.recover(total, rnd.ids, bits), ring_sum(plain, bits))


@pytest.mark.parametrize("dropped", [[], [12], [11, 15], [10, 13, 16]])
def test_survivors_sum_is_recovered_after_dropouts(dropped: list[int]) -> None:
    rnd = Round(n=8, k=6, t=3)
    fp = FixedPoint.for_sites(8, 1.0, 1000.0)
    rng = np.random.default_rng(5)
    updates = {i: rng.normal(0, 0.5, 300) for i in rnd.ids}
    encoded = {i: fp.encode(updates[i], rng) for i in rnd.ids}
    masked = {i: rnd.masked(i, encoded[i], fp.bits) for i in rnd.ids}
    survivors = [i for i in rnd.ids if i not in dropped]  # dropped before sending input
    total = ring_sum([masked[i] for i in survivors], fp.bits)
    recovered = rnd.recover(total, survivors, fp.bits)
    np.testing.assert_array_equal(recovered, ring_sum([encoded[i] for i in survivors], fp.bits))
    plain = np.clip([updates[i] for i in survivors], -1, 1).sum(axis=0)
    assert np.abs(fp.decode_sum(recovered, len(survivors)) - plain).max() <= len(survivors) / 1000


def test_distributed_dp_encodings_ride_on_the_same_ring() -> None:
    mech = DistributedDiscreteGaussian(1.0, 50.0, 24, 1.0, 5, 200)
    rnd = Round(n=5, k=4, t=3)
    rng = SecureRng(seed=1)
    encoded = [mech.encode(np.full(200, 0.01), rng) for _ in rnd.ids]
    masked = [rnd.masked(i, e, mech.bits) for i, e in zip(rnd.ids, encoded, strict=True)]
    recovered = rnd.recover(ring_sum(masked, mech.bits), rnd.ids, mech.bits)
    np.testing.assert_array_equal(recovered, modular_sum(encoded, mech.bits))


def test_unmasking_with_fewer_than_t_shares_fails() -> None:
    rnd = Round(n=6, k=4, t=3)
    held = list(rnd.seed_shares[12].values())[:2]
    with pytest.raises(SecAggError, match="at least 3 shares"):
        shamir.combine(held, 3)


def _uniformity_p(values: np.ndarray, bits: int) -> float:
    """Chi-square p-value of the top 8 bits of ring values against the uniform law, and
    Kolmogorov-Smirnov of values / 2^b against U(0, 1): the smaller of the two."""
    top = (values >> np.uint64(bits - 8)).astype(np.int64)
    chi = chisquare(np.bincount(top, minlength=256)).pvalue
    ks = kstest(values.astype(np.float64) / 2.0**bits, "uniform").pvalue
    return float(min(chi, ks))


def test_masked_input_passes_a_uniformity_test_the_plain_input_fails() -> None:
    rnd = Round(n=5, k=4, t=3)
    fp = FixedPoint.for_sites(5, 1.0, 2**12)
    x = fp.encode(np.random.default_rng(2).normal(0, 0.1, 100_000), np.random.default_rng(3))
    assert _uniformity_p(x, fp.bits) < 1e-6  # the test has power: an update is not uniform
    assert _uniformity_p(rnd.masked(12, x, fp.bits), fp.bits) > 1e-3


def test_a_mask_depends_on_every_part_of_its_label() -> None:
    seed = os.urandom(32)
    base = expand(seed, 64, 32, pair_label(CTX, 1, 2))
    assert np.array_equal(base, expand(seed, 64, 32, pair_label(CTX, 2, 1)))
    for other in (
        pair_label(CTX, 1, 3),
        pair_label(RoundContext("job-a", 4), 1, 2),
        pair_label(RoundContext("job-b", 3), 1, 2),
        CTX.label("self-mask", 1),
    ):
        assert not np.array_equal(base, expand(seed, 64, 32, other))


def test_hostile_inputs_are_refused() -> None:
    seed = os.urandom(32)
    with pytest.raises(SecAggError, match="outside"):
        mask_input(np.array([2**20], dtype=np.uint64), 1, seed, {}, 20, CTX)
    with pytest.raises(SecAggError, match="uint64"):
        mask_input(np.array([1.0]), 1, seed, {}, 20, CTX)
    with pytest.raises(SecAggError, match="32 bytes"):
        mask_input(np.zeros(3, dtype=np.uint64), 1, b"x", {}, 20, CTX)
    with pytest.raises(SecAggError, match="distinct"):
        mask_input(np.zeros(3, dtype=np.uint64), 1, seed, {1: seed}, 20, CTX)
    with pytest.raises(SecAggError, match="both survivors"):
        unmask_sum(np.zeros(3, dtype=np.uint64), {1: seed, 2: seed}, {(1, 2): seed}, 20, CTX)
    with pytest.raises(SecAggError, match="shape"):
        ring_sum([np.zeros(3, dtype=np.uint64), np.zeros(4, dtype=np.uint64)], 20)


def test_expansion_is_the_chacha20_keystream_of_the_hkdf_key() -> None:
    """Known answer from the primitives directly: pins the format sites and server share."""
    seed, label = bytes(range(32)), pair_label(CTX, 4, 9)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(seed)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(80))
    words64 = np.frombuffer(stream, dtype=np.uint64)
    words32 = np.frombuffer(stream[:40], dtype=np.uint32).astype(np.uint64)
    np.testing.assert_array_equal(expand(seed, 10, 40, label), words64 & np.uint64(2**40 - 1))
    np.testing.assert_array_equal(expand(seed, 10, 20, label), words32 & np.uint64(2**20 - 1))


def test_chunking_continues_the_keystream(monkeypatch: pytest.MonkeyPatch) -> None:
    seed, label = os.urandom(32), CTX.label("self-mask", 1)
    whole = expand(seed, 3000, 64, label)
    monkeypatch.setattr(masking, "CHUNK_VALUES", 1000)
    chunked = expand(seed, 3000, 64, label)
    np.testing.assert_array_equal(chunked, whole)
    assert not np.array_equal(chunked[:1000], chunked[1000:2000])  # no keystream restart
