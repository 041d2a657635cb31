"""Secure aggregation at the site: a middleware stage around the trainer.

It answers the protocol's own kinds (keys, shares, unmask) from the site's protocol state,
which lives as long as the site object does (in the ``consortia client`` process, in one
pinned pool worker, in memory for the debug fleet). On a fit request that carries
``secagg`` it lets the inner stages train and privatize as usual, then turns what they
would have sent into a masked input: the distributed DP encoding as it is, or a float
update encoded to fixed point with its weight. Nothing else leaves with it: no example
count, no metrics.

It sits inside the policy check (a refused job never reaches the protocol) and outside
the privacy stage (masking is the last thing done to the update); the ledger's signing
stage, outermost, signs the masked input, which is what the server receives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from consortia.client.app import Handler, SiteApp
from consortia.core.messages import FitIns, FitRes, InvalidMessageError, ring_dtype
from consortia.secagg.context import SecAggError
from consortia.secagg.messages import (
    KeysIns,
    KeysRes,
    SharesIns,
    SharesRes,
    UnmaskIns,
    UnmaskRes,
    as_array,
)
from consortia.secagg.site import SiteProtocol, encode_weighted


def _protocol(app: SiteApp) -> SiteProtocol:
    proto = app.__dict__.get("secagg_protocol")
    if proto is None:
        proto = app.__dict__["secagg_protocol"] = SiteProtocol()
    return proto


def _ids(values: np.ndarray) -> list[int]:
    return [int(v) for v in values]


def secure_aggregation(app: SiteApp, message: Any, call_next: Handler) -> Any:
    """Answer the protocol's steps; mask a fit reply when the request asks for it."""
    try:
        if isinstance(message, KeysIns):
            cipher, mask = _protocol(app).keys(message)
            return KeysRes(app.site_id, message.round, as_array(cipher), as_array(mask))
        if isinstance(message, SharesIns):
            bundles = _protocol(app).shares(
                message.round,
                _ids(message.peers),
                message.cipher_keys.tobytes(),
                message.mask_keys.tobytes(),
            )
            return SharesRes(app.site_id, message.round, as_array(bundles))
        if isinstance(message, UnmaskIns):
            shares = _protocol(app).unmask(
                message.round, _ids(message.survivors), _ids(message.dropped)
            )
            return UnmaskRes(app.site_id, message.round, as_array(shares))
        if isinstance(message, FitIns) and message.secagg is not None:
            return _masked_fit(app, message, call_next)
    except SecAggError as exc:
        # The site's refusal travels as an error reply; the server records the site failed.
        raise InvalidMessageError(f"secure aggregation: {exc}") from None
    return call_next(message)


def _masked_fit(app: SiteApp, ins: FitIns, call_next: Handler) -> FitRes:
    proto = _protocol(app)
    sa = ins.secagg
    assert sa is not None
    keys = proto.settings(ins.round)  # refuses a fit out of turn before any training
    reply: FitRes = call_next(ins)
    if keys.weight_cap:
        from consortia.privacy.rng import SecureRng  # only here: the privacy stack is heavy

        if reply.delta.dtype.kind != "f":
            raise SecAggError("a float update was expected for fixed-point encoding")
        ring = encode_weighted(reply.delta, reply.num_examples, keys, SecureRng())
    else:
        ring = np.asarray(reply.delta, np.uint64)  # distributed DP's ring element
    masked = proto.mask(ins.round, sa.bits, _ids(sa.senders), sa.bundles.tobytes(), ring)
    dtype = ring_dtype(sa.bits)
    wire = masked.view(np.int32) if dtype == np.int32 else masked  # uint32 words: viewed
    return FitRes(app.site_id, ins.round, wire, 0, {}, seeded_noise=reply.seeded_noise)
