"""Pair secrets agree at both ends only; share bundles open only for their pair and round."""

import os

import pytest

from consortia.secagg.channel import open_sealed, seal
from consortia.secagg.context import RoundContext, SecAggError
from consortia.secagg.keys import KeyPair, pair_secret

CTX = RoundContext("job", 7)


def test_both_ends_derive_the_same_secret_and_outsiders_do_not() -> None:
    a, b, eve = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    ab = pair_secret(a.private, 1, b.public, 2, CTX, "mask")
    assert ab == pair_secret(b.private, 2, a.public, 1, CTX, "mask")
    assert ab != pair_secret(eve.private, 1, b.public, 2, CTX, "mask")
    assert ab != pair_secret(a.private, 1, b.public, 2, CTX, "cipher")
    assert ab != pair_secret(a.private, 1, b.public, 2, RoundContext("job", 8), "mask")
    rebuilt = KeyPair.from_private_bytes(a.private_bytes())
    assert rebuilt.public == a.public
    assert pair_secret(rebuilt.private, 1, b.public, 2, CTX, "mask") == ab


@pytest.mark.parametrize(("public", "match"), [(bytes(32), "degenerate"), (b"short", "32 bytes")])
def test_hostile_public_keys_are_refused(public: bytes, match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        pair_secret(KeyPair.generate().private, 1, public, 2, CTX, "mask")


def test_a_bundle_opens_only_for_its_sender_receiver_job_and_round() -> None:
    key = os.urandom(32)
    sealed = seal(key, b"shares", 1, 2, CTX)
    assert open_sealed(key, sealed, 1, 2, CTX) == b"shares"
    for sender, receiver, ctx in [
        (1, 3, CTX),
        (2, 1, CTX),
        (3, 2, CTX),
        (1, 2, RoundContext("job", 8)),
        (1, 2, RoundContext("other", 7)),
    ]:
        with pytest.raises(SecAggError, match="fails authentication"):
            open_sealed(key, sealed, sender, receiver, ctx)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecAggError, match="fails authentication"):
        open_sealed(key, tampered, 1, 2, CTX)
    with pytest.raises(SecAggError, match="fails authentication"):
        open_sealed(os.urandom(32), sealed, 1, 2, CTX)
    with pytest.raises(SecAggError, match="invalid length"):
        open_sealed(key, sealed[:20], 1, 2, CTX)


def test_bad_contexts_and_ids_are_refused() -> None:
    with pytest.raises(SecAggError, match="round"):
        RoundContext("job", -1)
    with pytest.raises(SecAggError, match="job"):
        RoundContext("", 1)
    with pytest.raises(SecAggError, match="itself"):
        seal(os.urandom(32), b"x", 4, 4, CTX)
    with pytest.raises(SecAggError, match="site id"):
        pair_secret(KeyPair.generate().private, True, KeyPair.generate().public, 2, CTX, "mask")  # type: ignore[arg-type]
