"""SecAgg+'s four phases through a real GrpcFleet and run_site: the protocol kinds' uint8
and int64 arrays (empty ones too: nobody dropped), masked inputs as int32 words (bits <=
32) or uint64 (wider rings) in many chunks, each held to the exact size its request
announces, and each site's protocol state kept in its site object across the phases, even
when its connection drops between two of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from grpc_site_helpers import SITES, AddTrainer, SiteStarter, make_site, wait_for

from consortia.client.app import SiteApp
from consortia.core.config import SecureAggregationConfig
from consortia.core.events import PhaseRecord
from consortia.core.messages import FitIns, FitRes, SecureInput, TrainSettings
from consortia.fleet.base import Reply, Timing
from consortia.fleet.grpc import GrpcFleet
from consortia.secagg.messages import BUNDLE_BYTES
from consortia.secagg.server import ServerRound
from consortia.server.phases import Phase, run_phase
from consortia.server.secure_fit import decode_weighted, round_params

EXAMPLES = (10, 20, 30)
STEPS = (1.0, 2.0, 3.0)  # AddTrainer: each site's update is its step, everywhere
# The fleet's chunks are 64 KiB: 50,001 words are 4 chunks as int32, 7 as uint64.
SIZE = 50_001


def _phase(fleet: GrpcFleet, requests: Sequence[tuple[str, Any]], accept: Callable) -> None:
    outcomes = list(fleet.send(requests, Timing(10)))
    assert len(outcomes) == len(requests)
    for out in outcomes:
        assert isinstance(out, Reply), out
        accept(out.site, out.message)


@pytest.mark.parametrize("bits", [32, 40])
def test_a_secure_round_over_grpc_gives_the_weighted_mean_after_a_reconnect(
    fleet: GrpcFleet, start_site: SiteStarter, bits: int
) -> None:
    for name, n, step in zip(SITES, EXAMPLES, STEPS, strict=True):
        start_site(fleet, make_site(name, n=n, trainer=AddTrainer(step=step)))
    fleet.wait_for_sites(3, timeout=5)
    params = round_params(SecureAggregationConfig(neighbours=2, clip_range=4.0, bits=bits), 3, None)
    proto = ServerRound("job-1", 1, list(SITES), params)
    _phase(fleet, proto.keys_requests(), proto.accept_keys)
    _phase(fleet, proto.shares_requests(), proto.accept_shares)
    # site-b's connection drops between its shares and its masked input: the client
    # reconnects with the same site object, whose protocol state carries on.
    first = fleet._sessions["site-b"]
    first.close("test cut the connection")
    assert wait_for(lambda: fleet._sessions.get("site-b") not in (None, first))
    w = np.zeros(SIZE, np.float32)
    requests = [
        (site, FitIns(1, w, TrainSettings(), 0, sites=3, job="job-1", secagg=secure))
        for site, secure in proto.secure_inputs().items()
    ]
    words = np.dtype(np.int32) if bits <= 32 else np.dtype(np.uint64)

    def accept_masked(site: str, res: Any) -> None:
        assert res.delta.dtype == words and res.delta.shape == (SIZE + 1,)
        assert (res.num_examples, res.metrics) == (0, {})  # nothing but ring elements
        proto.accept_masked(site, res.delta)

    _phase(fleet, requests, accept_masked)
    unmask = proto.unmask_requests()
    assert all(ins.dropped.size == 0 and ins.dropped.dtype == np.int64 for _, ins in unmask)
    _phase(fleet, unmask, proto.accept_unmask)
    mean = decode_weighted(proto.result(), params, 3)
    want = sum(n * s for n, s in zip(EXAMPLES, STEPS, strict=True)) / sum(EXAMPLES)
    # Stochastic rounding moves each site's w * step and w * clip by under 1/scale, with
    # w = n / weight_cap; the mean is their sums' ratio, so the bound is divided by sum(w).
    total_w = sum(EXAMPLES) / params.weight_cap
    bound = 3 / (params.scale * total_w) * (1 + want / params.clip)
    np.testing.assert_allclose(mean, np.full(SIZE, want), rtol=0, atol=bound)
    assert proto.figures.masked_inputs == 3 and proto.figures.individual_unmasked == 0
    assert fleet.refusal_count == 0


class _Masker(SiteApp):
    """Answers a secure fit with whatever ``reply`` builds: a hostile site's masked input."""

    def __init__(self, reply: Callable[[FitIns], FitRes]) -> None:
        super().__init__("site-a")
        self.reply = reply

    def on_fit(self, ins: FitIns) -> FitRes:
        return self.reply(ins)


D = 5  # model size; a masked float update is D + 1 words (the weight coordinate)
# Sizes and dtypes are the transport's (announced before any array arrives); counts and
# metrics the reply check's.
HOSTILE: dict[str, tuple[Callable[[FitIns], FitRes], str]] = {
    "float update in the clear": (
        lambda ins: FitRes("site-a", 1, np.ones(D + 1, np.float32), 0, {}),
        "announces arrays [delta (6 float32)]; expected [delta (6 int32)]",
    ),
    "no weight coordinate": (
        lambda ins: FitRes("site-a", 1, np.ones(D, np.int32), 0, {}),
        "announces arrays [delta (5 int32)]; expected [delta (6 int32)]",
    ),
    "an example count": (
        lambda ins: FitRes("site-a", 1, np.ones(D + 1, np.int32), 7, {}),
        "a masked input carries no example count, metrics or clip bit",
    ),
    "metrics": (
        lambda ins: FitRes("site-a", 1, np.ones(D + 1, np.int32), 0, {"loss": 0.5}),
        "a masked input carries no example count, metrics or clip bit",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_masked_input_with_anything_but_ring_words_is_refused_at_the_boundary(
    fleet: GrpcFleet, start_site: SiteStarter, case: str
) -> None:
    """What a secure fit reply may not carry is refused before the protocol sees it: by
    the transport (size and dtype, announced exactly) or by the phase's reply check; the
    same site's reply of ring words only, to the next request, is accepted."""
    build, named = HOSTILE[case]
    site = _Masker(build)
    start_site(fleet, site)
    fleet.wait_for_sites(1, timeout=5)
    secure = SecureInput(32, np.array([2, 3], np.int64), np.zeros(2 * BUNDLE_BYTES, np.uint8))
    ins = FitIns(1, np.zeros(D, np.float32), TrainSettings(), 0, sites=3, secagg=secure)
    accepted: list[FitRes] = []

    def fit() -> PhaseRecord:
        phase = Phase("fit", 1, [("site-a", ins)], deadline_s=5, min_replies=0)
        return run_phase(fleet, phase, lambda site, res: accepted.append(res))

    bad = fit()
    assert accepted == [] and len(bad.failures) == 1
    assert named in bad.failures[0].reason, bad.failures[0].reason
    site.reply = lambda ins: FitRes("site-a", 1, np.ones(D + 1, np.int32), 0, {})
    assert fit().accepted == ["site-a"]
    assert accepted[0].delta.dtype == np.int32
