"""SecAgg+ rounds between a ServerRound and SiteProtocols, played in process.

The server here is curious: every message it receives is kept (``Run.view``) and the tests
look in it for anything of a site's update. Sites drop out at each step; the server asks
for what an honest protocol would not give it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy.stats import chisquare

from consortia.core.config import SecureAggregationConfig
from consortia.core.messages import FitIns, FitRes, InvalidMessageError, TrainSettings, check_reply
from consortia.core.messages import kind_of as message_kind
from consortia.secagg import server as server_module
from consortia.secagg.context import SecAggError
from consortia.secagg.masking import expand, self_label
from consortia.secagg.messages import (
    KeysIns,
    KeysRes,
    SharesRes,
    UnmaskIns,
    UnmaskRes,
)
from consortia.secagg.server import RoundParams, ServerRound
from consortia.secagg.site import SiteProtocol, encode_weighted
from consortia.server.secure_fit import decode_weighted, round_params

U8 = np.uint8


def _u8(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, U8).copy()


@dataclass
class Run:
    """One round: sites answer the server's requests unless they have dropped."""

    server: ServerRound
    sites: dict[str, SiteProtocol]
    view: list[object] = field(default_factory=list)  # every reply the server received
    refusals: list[str] = field(default_factory=list)  # what sites refused, as the fleet would

    def phase(
        self,
        requests: list[tuple[str, object]],
        answer: Callable[[str, SiteProtocol, object], object],
        accept: Callable[[str, object], None],
        gone: set[str],
    ) -> None:
        for name, request in requests:
            if name in gone:
                continue
            try:
                reply = answer(name, self.sites[name], request)
            except SecAggError as exc:  # a fleet turns a site's refusal into a failure
                self.refusals.append(f"{name}: {exc}")
                continue
            check_reply(reply, request, name)  # what the transport's checks would do
            self.view.append(reply)
            accept(name, reply)


def _keys(name: str, site: SiteProtocol, ins: object) -> KeysRes:
    assert isinstance(ins, KeysIns)
    message_kind(ins).check_request(ins)  # type: ignore[misc]
    c, m = site.keys(ins)
    return KeysRes(name, ins.round, _u8(c), _u8(m))


def _shares(name: str, site: SiteProtocol, ins: object) -> SharesRes:
    raw = site.shares(
        ins.round,  # type: ignore[attr-defined]
        [int(p) for p in ins.peers],  # type: ignore[attr-defined]
        ins.cipher_keys.tobytes(),  # type: ignore[attr-defined]
        ins.mask_keys.tobytes(),  # type: ignore[attr-defined]
    )
    return SharesRes(name, ins.round, _u8(raw))  # type: ignore[attr-defined]


def _unmask(name: str, site: SiteProtocol, ins: object) -> UnmaskRes:
    assert isinstance(ins, UnmaskIns)
    raw = site.unmask(ins.round, [int(v) for v in ins.survivors], [int(v) for v in ins.dropped])
    return UnmaskRes(name, ins.round, _u8(raw))


def play(
    inputs: dict[str, np.ndarray],
    params: RoundParams,
    *,
    drop_before_shares: set[str] = frozenset(),  # type: ignore[assignment]
    drop_before_input: set[str] = frozenset(),  # type: ignore[assignment]
    drop_before_unmask: set[str] = frozenset(),  # type: ignore[assignment]
    round_: int = 1,
) -> tuple[Run, np.ndarray]:
    """A full round; ``inputs`` are ring vectors (uint64) the sites mask and send."""
    server = ServerRound("job-1", round_, list(inputs), params)
    run = Run(server, {name: SiteProtocol() for name in inputs})
    run.phase(server.keys_requests(), _keys, server.accept_keys, set())
    run.phase(server.shares_requests(), _shares, server.accept_shares, set(drop_before_shares))
    secure = server.secure_inputs()
    d = next(iter(inputs.values())).size
    weights = np.zeros(max(d - 1, 1), np.float32)
    for name, sa in secure.items():
        if name in drop_before_input or name in drop_before_shares:
            continue
        request = FitIns(round_, weights, TrainSettings(), 0, secagg=sa)
        masked = run.sites[name].mask(
            round_, sa.bits, [int(s) for s in sa.senders], sa.bundles.tobytes(), inputs[name]
        )
        wire = masked.astype(np.uint32).view(np.int32) if sa.bits <= 32 else masked
        reply = FitRes(name, round_, wire, 0, {})
        if d - 1 == weights.size:  # float path: the masked input carries the weight
            check_reply(reply, request, name)
        run.view.append(reply)
        server.accept_masked(name, wire)
    gone = set(drop_before_unmask) | set(drop_before_input) | set(drop_before_shares)
    run.phase(server.unmask_requests(), _unmask, server.accept_unmask, gone)
    return run, server.result()


def ring_inputs(n: int, d: int, bits: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"site-{i:02d}": rng.integers(0, 1 << bits, d, dtype=np.uint64) for i in range(n)}


def ring_total(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total = (total + v) & np.uint64((1 << bits) - 1)
    return total


# ---- the sum --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "t", "bits"), [(3, 2, 2, 32), (8, 4, 3, 20), (10, 9, 6, 62)])
def test_masks_cancel_and_the_sum_is_exact_in_the_ring(n: int, k: int, t: int, bits: int) -> None:
    inputs = ring_inputs(n, 257, bits)
    run, total = play(inputs, RoundParams(k, t, bits))
    assert np.array_equal(total, ring_total(list(inputs.values()), bits))
    assert run.server.figures.masked_inputs == n and run.server.figures.dropouts_recovered == 0


def test_float_updates_sum_within_the_stated_quantisation_bound() -> None:
    """Weighted mean of clipped updates, error per coordinate below the encoding's bound."""
    rng = np.random.default_rng(3)
    n, d = 7, 1000
    cfg = SecureAggregationConfig(clip_range=0.5, weight_cap=100)
    params = round_params(cfg, n, None)
    updates = [rng.normal(0, 0.3, d) for _ in range(n)]
    examples = [5, 17, 40, 100, 250, 1, 60]  # 250 is over the cap: weighs as 100
    keys = KeysIns(
        1,
        "j",
        1,
        n,
        params.neighbours,
        params.threshold,
        "0" * 64,
        params.bits,
        params.clip,
        params.scale,
        params.weight_cap,
    )
    encoded = {
        f"s{i}": encode_weighted(u, e, keys, np.random.default_rng(i))
        for i, (u, e) in enumerate(zip(updates, examples, strict=True))
    }
    _, total = play(encoded, params)
    got = decode_weighted(total, params, n)
    w = np.minimum(examples, 100) / 100
    clipped_sum = sum(np.clip(wi * u, -0.5, 0.5) for wi, u in zip(w, updates, strict=True))
    want = clipped_sum / w.sum()
    # decode_sum: |error of a sum| < n / scale for each coordinate and for the weight
    # coordinate (weight * clip), so the mean is off by at most (e + |want| e / clip) / W'.
    e = n / params.scale
    bound = (e + np.abs(want) * e / params.clip) / (w.sum() - e / params.clip)
    assert np.all(np.abs(got - want) <= bound)
    assert np.max(np.abs(got - want)) > 0  # it is a bound on a real rounding, not equality


# ---- dropouts -------------------------------------------------------------------------------


def test_sites_that_drop_before_their_input_are_recovered_up_to_the_threshold() -> None:
    n, k, t, bits = 6, 5, 4, 32  # complete graph: each secret has 6 holders, 4 needed
    inputs = ring_inputs(n, 64, bits, seed=1)
    gone = {"site-01", "site-04"}  # two dropped after sharing: 4 holders remain
    run, total = play(inputs, RoundParams(k, t, bits), drop_before_input=gone)
    kept = [v for s, v in inputs.items() if s not in gone]
    assert np.array_equal(total, ring_total(kept, bits))
    assert run.server.figures.dropouts_recovered == 2
    assert run.server.figures.individual_unmasked == 0


def test_sites_that_drop_after_their_input_stay_in_the_sum() -> None:
    n, k, t, bits = 6, 5, 4, 32
    inputs = ring_inputs(n, 64, bits, seed=2)
    run, total = play(inputs, RoundParams(k, t, bits), drop_before_unmask={"site-00", "site-05"})
    assert np.array_equal(total, ring_total(list(inputs.values()), bits))
    assert run.server.figures.masked_inputs == 6


def test_sites_that_drop_before_sharing_are_left_out() -> None:
    inputs = ring_inputs(6, 64, 32, seed=4)
    _, total = play(inputs, RoundParams(5, 4, 32), drop_before_shares={"site-02"})
    kept = [v for s, v in inputs.items() if s != "site-02"]
    assert np.array_equal(total, ring_total(kept, 32))


def test_too_many_dropouts_fail_cleanly_and_nothing_is_unmasked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rebuilt: list[object] = []
    real = server_module.combine
    monkeypatch.setattr(
        server_module, "combine", lambda shares, t: rebuilt.append(shares) or real(shares, t)
    )
    inputs = ring_inputs(6, 64, 32, seed=5)
    gone = {"site-00", "site-02", "site-03"}  # three of six gone: 3 holders < t = 4
    with pytest.raises(SecAggError, match="fewer than 4 shares"):
        play(inputs, RoundParams(5, 4, 32), drop_before_input=gone)
    assert rebuilt == []  # not one secret was rebuilt


def test_survivors_refuse_to_unmask_with_fewer_than_threshold_holders_alive() -> None:
    server = ServerRound("job-1", 1, [f"s{i}" for i in range(6)], RoundParams(5, 4, 32))
    sites = {name: SiteProtocol() for name in server.ids}
    run = Run(server, sites)
    run.phase(server.keys_requests(), _keys, server.accept_keys, set())
    run.phase(server.shares_requests(), _shares, server.accept_shares, set())
    for name, sa in server.secure_inputs().items():
        masked = sites[name].mask(
            1, 32, [int(s) for s in sa.senders], sa.bundles.tobytes(), np.zeros(4, np.uint64)
        )
        if name in ("s0", "s1", "s2"):
            server.accept_masked(name, masked.astype(np.uint32).view(np.int32))
    # A server that hides the survivors would ask for key shares of sites that sent input;
    # here three of six sent theirs: each survivor holds 3 < t = 4 live holders and refuses.
    run.phase(server.unmask_requests(), _unmask, server.accept_unmask, set())
    assert len(run.refusals) == 3
    assert all("refusing to unmask" in r for r in run.refusals)
    assert not any(isinstance(m, UnmaskRes) for m in run.view)


# ---- what the curious server sees ----------------------------------------------------------


def _uniformity_p(values: np.ndarray, bits: int) -> float:
    """Chi-square p-value of the top 4 bits of ring values against uniform."""
    top = (values.astype(np.uint64) >> np.uint64(bits - 4)).astype(np.int64)
    counts = np.bincount(top, minlength=16)
    return float(chisquare(counts).pvalue)


def test_the_servers_view_holds_no_update_and_masked_inputs_look_uniform() -> None:
    n, d, bits = 8, 20000, 32
    # The most structured inputs there are: all zeros, and one site's constant pattern.
    inputs = {f"site-{i}": np.zeros(d, np.uint64) for i in range(n)}
    inputs["site-3"] = np.full(d, 12345, np.uint64)
    run, total = play(inputs, RoundParams(4, 3, bits))
    masked = [m for m in run.view if isinstance(m, FitRes)]
    assert len(masked) == n
    for reply in masked:
        values = reply.delta.view(np.uint32).astype(np.uint64)
        assert _uniformity_p(values, bits) > 1e-4
        assert not np.array_equal(values, inputs[reply.site])
        assert np.count_nonzero(values == inputs[reply.site]) < d / 1000
    # every other thing the server received is keys, sealed bundles and shares: none of
    # them is model-sized, so no update can hide in them
    others = [m for m in run.view if not isinstance(m, FitRes)]
    assert others and all(
        sum(a.size for a in vars(m).values() if isinstance(a, np.ndarray)) < d for m in others
    )
    assert total[0] == 12345 and np.count_nonzero(total == 12345) == d


def test_the_shares_the_server_holds_cannot_unmask_one_site() -> None:
    n, d, bits = 6, 5000, 32
    inputs = {f"site-{i}": np.zeros(d, np.uint64) for i in range(n)}
    run, _ = play(inputs, RoundParams(4, 3, bits))
    server = run.server
    victim = server.ids["site-2"]
    # The server rebuilt site-2's self-mask seed (it survived) but holds no share of its
    # mask key, so it cannot rebuild the pair masks inside site-2's input.
    assert victim not in server.key_shares
    seed = server_module.combine(server.seed_shares[victim], 3)
    y = next(m for m in run.view if isinstance(m, FitRes) and m.site == "site-2")
    peeled = (
        y.delta.view(np.uint32).astype(np.uint64)
        - expand(seed, d, bits, self_label(server.context, victim))
    ) & np.uint64((1 << bits) - 1)
    assert not np.array_equal(peeled, inputs["site-2"])
    assert _uniformity_p(peeled, bits) > 1e-4  # still one-time padded by the pair masks


# ---- the site's state machine --------------------------------------------------------------


def _started(n: int = 5, k: int = 4, t: int = 3) -> tuple[ServerRound, dict[str, SiteProtocol]]:
    server = ServerRound("job-1", 1, [f"s{i}" for i in range(n)], RoundParams(k, t, 32))
    sites = {name: SiteProtocol() for name in server.ids}
    for name, ins in server.keys_requests():
        server.accept_keys(name, _keys(name, sites[name], ins))
    return server, sites


def _through_masking(server: ServerRound, sites: dict[str, SiteProtocol]) -> None:
    for name, ins in server.shares_requests():
        server.accept_shares(name, _shares(name, sites[name], ins))
    for name, sa in server.secure_inputs().items():
        vec = np.zeros(8, np.uint64)
        masked = sites[name].mask(1, 32, [int(s) for s in sa.senders], sa.bundles.tobytes(), vec)
        server.accept_masked(name, masked.astype(np.uint32).view(np.int32))


def test_a_site_never_gives_both_shares_of_one_peer() -> None:
    server, sites = _started()
    _through_masking(server, sites)
    name, ins = server.unmask_requests()[0]
    me = server.ids[name]
    peer = next(int(p) for p in ins.survivors if int(p) != me)
    both = UnmaskIns(1, ins.survivors, np.array(sorted([*map(int, ins.dropped), peer]), np.int64))
    with pytest.raises(InvalidMessageError, match="both survivor and dropped"):
        message_kind(both).check_request(both)  # type: ignore[misc]
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        sites[name].unmask(1, [int(v) for v in both.survivors], [int(v) for v in both.dropped])
    # asked first for the self-mask share, then (as if it had dropped) for the key share
    sites[name].unmask(1, [int(v) for v in ins.survivors], [])
    with pytest.raises(SecAggError, match="unmask step"):
        sites[name].unmask(1, [me], [peer])


def test_a_site_names_itself_a_survivor_only() -> None:
    server, sites = _started()
    _through_masking(server, sites)
    name, ins = server.unmask_requests()[0]
    me = server.ids[name]
    others = [int(v) for v in ins.survivors if int(v) != me]
    with pytest.raises(SecAggError, match="it is a survivor"):
        sites[name].unmask(1, others, [me])


def test_steps_out_of_order_repeated_or_late_are_refused() -> None:
    site = SiteProtocol()
    with pytest.raises(SecAggError, match="no keys step"):
        site.shares(1, [2], bytes(32), bytes(32))
    server, sites = _started()
    name, ins = server.shares_requests()[0]
    s = sites[name]
    with pytest.raises(SecAggError, match="expected after the shares step"):
        s.mask(1, 32, [], b"", np.zeros(4, np.uint64))  # masking before sharing
    with pytest.raises(SecAggError, match="this site is in round 1"):
        s.shares(2, [int(p) for p in ins.peers], ins.cipher_keys.tobytes(), ins.mask_keys.tobytes())
    _shares(name, s, ins)
    with pytest.raises(SecAggError, match="has done the shares step"):
        _shares(name, s, ins)  # repeated
    keys_round_0 = KeysIns(0, "job-1", 1, 5, 4, 3, "0" * 64, 32)
    with pytest.raises(SecAggError, match="round 1 has started"):
        s.keys(keys_round_0)  # late: an older round's keys


def test_a_site_shares_only_with_its_graph_neighbours() -> None:
    server, sites = _started(n=9, k=4, t=3)
    name, ins = server.shares_requests()[0]
    me = server.ids[name]
    stranger = next(i for i in server.names if i != me and i not in server.graph[me])
    peers = sorted([*map(int, ins.peers), stranger])
    keys = ins.cipher_keys.tobytes() + bytes(32)
    with pytest.raises(SecAggError, match="is not a neighbour"):
        sites[name].shares(1, peers, keys, ins.mask_keys.tobytes() + bytes(32))


def test_a_site_refuses_to_mask_with_too_few_neighbours() -> None:
    server, sites = _started(n=5, k=4, t=4)
    for name, ins in server.shares_requests():
        server.accept_shares(name, _shares(name, sites[name], ins))
    name, sa = next(iter(server.secure_inputs().items()))
    senders = [int(s) for s in sa.senders][:2]  # the server withholds two neighbours' bundles
    with pytest.raises(SecAggError, match="at least 3 are needed"):
        sites[name].mask(1, 32, senders, sa.bundles.tobytes()[: 2 * 98], np.zeros(4, np.uint64))


def test_a_tampered_bundle_is_refused() -> None:
    server, sites = _started()
    for name, ins in server.shares_requests():
        server.accept_shares(name, _shares(name, sites[name], ins))
    name, sa = next(iter(server.secure_inputs().items()))
    raw = bytearray(sa.bundles.tobytes())
    raw[40] ^= 1
    with pytest.raises(SecAggError, match="fails authentication"):
        sites[name].mask(1, 32, [int(s) for s in sa.senders], bytes(raw), np.zeros(4, np.uint64))


def test_a_new_round_starts_fresh_keys() -> None:
    _, sites = _started()
    site = next(iter(sites.values()))
    first = site.keys(KeysIns(1, "job-1", 1, 5, 4, 3, "0" * 64, 32))
    again = site.keys(KeysIns(1, "job-1", 1, 5, 4, 3, "0" * 64, 32))  # a retried round
    assert first != again


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("me", 6, "out of range"),
        ("neighbours", 3, "neighbours"),
        ("threshold", 2, "threshold"),
        ("graph_seed", "zz", "graph seed"),
        ("bits", 63, "bits"),
    ],
)
def test_bad_keys_requests_are_refused(field: str, value: object, match: str) -> None:
    good = dict(
        round=1, job="j", me=1, sites=5, neighbours=4, threshold=3, graph_seed="0" * 64, bits=32
    )
    ins = KeysIns(**{**good, field: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match=match):
        message_kind(ins).check_request(ins)  # type: ignore[misc]


def test_a_round_needs_three_sites() -> None:
    with pytest.raises(SecAggError, match=r"3\.\.65535 distinct"):
        ServerRound("j", 1, ["a", "b"], RoundParams(1, 1, 32))


def test_a_site_left_with_too_few_neighbours_is_dropped_before_anyone_masks_with_it() -> None:
    """Its mask key could not be rebuilt, so nobody may mask with it: the round goes on."""
    n, k, t, bits = 9, 4, 3, 32
    seed = bytes(range(32))
    inputs = ring_inputs(n, 32, bits, seed=7)
    names = sorted(inputs)
    probe = ServerRound("job-1", 1, names, RoundParams(k, t, bits), graph_seed=seed)
    victim = probe.ids[names[0]]
    near = sorted(probe.graph[victim])
    gone = {probe.names[i] for i in near[:3]}  # 3 of its 4 neighbours vanish before sharing
    server = ServerRound("job-1", 1, names, RoundParams(k, t, bits), graph_seed=seed)
    run = Run(server, {name: SiteProtocol() for name in inputs})
    run.phase(server.keys_requests(), _keys, server.accept_keys, set())
    run.phase(server.shares_requests(), _shares, server.accept_shares, gone)
    secure = server.secure_inputs()
    assert names[0] not in secure
    assert all(victim not in server.senders_of[j] for j in server.senders_of)
    for name, sa in secure.items():
        masked = run.sites[name].mask(
            1, bits, [int(s) for s in sa.senders], sa.bundles.tobytes(), inputs[name]
        )
        server.accept_masked(name, masked.astype(np.uint32).view(np.int32))
    run.phase(server.unmask_requests(), _unmask, server.accept_unmask, set())
    kept = [inputs[name] for name in secure]
    assert np.array_equal(server.result(), ring_total(kept, bits))
