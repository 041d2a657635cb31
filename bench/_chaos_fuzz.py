"""Fuzz (issue 8, part 6c): hostile messages against a live ``consortia server`` while honest
sites run a real job; counts crashes, refusals, store changes and whether the honest
sites finish with the digest of a run without any fuzzing.

The same job runs twice, over mutual TLS with certificates made by ``consortia keys``:
three honest ``consortia client`` processes (bench/_chaos_app.py) and ``mallory``, a
fourth enrolled site that says a real hello and is asked every round like the others.
In the reference run mallory declines each request at once. In the fuzzed run, when a
round's request reaches mallory, that round's share of the hostile messages goes out
first, from every kind of peer at once:

- enrolled, on mallory's live stream: Hypothesis-generated site messages
  (bench/_hostile.py) and byte-level mutations (bit flips, truncations, splices, broken
  length fields) of the real frames a client would send (hello, fit reply, its chunks);
- enrolled, on new streams: one hostile first message each, with mallory's certificate
  and with each honest site's certificate while that site is connected;
- unauthenticated: TLS without a client certificate, TLS with a certificate from
  another CA (named ``site-a``), and plain TCP carrying garbage, partial or broken TLS
  ClientHellos and a plaintext HTTP/2 preface;

then mallory declines as in the reference run. Mutations replay round 1's frames from
round 2 on, when their request is closed: a mutation that left an open reply intact would
be an honest answer from an enrolled site, not an attack.

Usage:
  python bench/chaos.py fuzz [--messages 10000] [--rounds 10] [--seed 0] [--json OUT]
  python bench/_chaos_fuzz.py --quick        # a few hundred messages, 3 rounds

Exits 1 on a server crash, an unintended store change, a welcomed hostile peer or an
honest site that did not finish with the reference digest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as a script or imported from tests
    sys.path.insert(0, str(BENCH))
# gRPC's core logs every refused handshake of this process's hostile peers at INFO.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from _fuzz_job import HONEST, HOSTILE, JobRun, Pki, run_job  # noqa: E402
from _fuzz_plan import Fuzzer  # noqa: E402


def compare_stores(ref: JobRun, fuzzed: JobRun) -> list[str]:
    """Rows of the fuzzed run's store that differ from the reference's (after the columns
    that legitimately differ between two runs are normalised, see ``JobRun.rows``)."""
    diffs = []
    for table in sorted(set(ref.rows) | set(fuzzed.rows)):
        a, b = ref.rows.get(table, []), fuzzed.rows.get(table, [])
        extra = [r for r in b if r not in a]
        missing = [r for r in a if r not in b]
        diffs += [f"{table}: unexpected row {r}" for r in extra]
        diffs += [f"{table}: row missing {r}" for r in missing]
    return diffs


def figures(ref: JobRun, fuzzed: JobRun, fuzzer: Fuzzer, seconds: float) -> dict[str, Any]:
    store_diffs = compare_stores(ref, fuzzed)
    crashes = [r.name for r in (ref, fuzzed) if r.crashed]
    honest_ok = all(rc == 0 for rc in fuzzed.clients.values()) and (
        fuzzed.final_digest == ref.final_digest is not None
    )
    return {
        "messages": sum(fuzzer.sent.values()),
        "sent_by_peer": dict(sorted(fuzzer.sent.items())),
        "mutations": dict(sorted(fuzzer.mutations.items())),
        "rounds": fuzzed.rounds_completed,
        "server_crashes": len(crashes),
        "crashed": crashes,
        "server_exit": fuzzed.server_rc,
        "refusals_logged_site_stream": fuzzed.log_count(f"refused from {HOSTILE}:"),
        # one per hostile message, and one per decline that came after a hostile reply
        # had already closed mallory's request ("second reply ... refused"); the declines
        # are modelled in stream order, since a refused one makes the server drop the
        # chunks of its request that follow (the next round's mutated frames) quietly
        "refusals_expected_site_stream": fuzzer.expected_stream_refusals(fuzzed.hostile_resolved),
        "refusals_logged_connections": fuzzed.log_count(": connection refused:"),
        "connection_refusals": fuzzer.connection_refusals(),
        "welcomed_hostile_peers": fuzzer.welcomed(),
        "raw_held_past_handshake": fuzzer.raw.held,
        "unexpected_stream_ends": fuzzer.notes[:10],
        "store_changes": len(store_diffs),
        "store_diffs": store_diffs[:10],
        "honest_sites_finished": honest_ok,
        "honest_exit_codes": fuzzed.clients,
        "final_digest": fuzzed.final_digest,
        "reference_digest": ref.final_digest,
        "seconds_fuzzed_run": round(fuzzed.seconds, 1),
        "seconds_reference_run": round(ref.seconds, 1),
        "seconds_total": round(seconds, 1),
    }


def failed(f: dict[str, Any]) -> list[str]:
    """Why the run fails the acceptance (nothing: it passes)."""
    why = []
    if f["server_crashes"]:
        why.append(f"the server crashed ({', '.join(f['crashed'])} run)")
    if f["store_changes"]:
        why.append(f"{f['store_changes']} unintended store changes")
    if not f["honest_sites_finished"]:
        why.append("the honest sites did not all finish with the reference digest")
    if f["welcomed_hostile_peers"]:
        why.append(f"{f['welcomed_hostile_peers']} hostile peers were welcomed")
    if f["refusals_logged_site_stream"] != f["refusals_expected_site_stream"]:
        why.append(
            f"{f['refusals_logged_site_stream']} refusals logged on {HOSTILE}'s stream, "
            f"{f['refusals_expected_site_stream']} expected: a message got through unrefused "
            "or was refused twice"
        )
    peers = sum(n for k, n in f["sent_by_peer"].items() if not k.startswith("site stream"))
    if sum(f["connection_refusals"].values()) != peers:
        why.append(
            f"{sum(f['connection_refusals'].values())} of {peers} new connections or streams "
            "were seen refused"
        )
    if f["raw_held_past_handshake"]:
        why.append(f"{f['raw_held_past_handshake']} raw connections held open")
    return why


def report(f: dict[str, Any]) -> None:
    print(f"hostile messages sent: {f['messages']} over {f['rounds']} rounds")
    for peer, n in f["sent_by_peer"].items():
        print(f"  {peer:<28} {n:>6}")
    print("  mutations of real frames: " + ", ".join(f"{k} {v}" for k, v in f["mutations"].items()))
    print(f"server crashes: {f['server_crashes']} (exit code {f['server_exit']})")
    print(
        f"refusals logged on {HOSTILE}'s stream: {f['refusals_logged_site_stream']} "
        f"(expected {f['refusals_expected_site_stream']})"
    )
    print(f"refused streams logged: {f['refusals_logged_connections']}")
    print(
        "connection-level refusals seen by the peers: "
        + ", ".join(f"{k} {v}" for k, v in f["connection_refusals"].items())
    )
    print(f"hostile peers welcomed: {f['welcomed_hostile_peers']}")
    print(f"raw connections held past the handshake timeout: {f['raw_held_past_handshake']}")
    for note in f["unexpected_stream_ends"]:
        print(f"  note: {note}")
    print(f"unintended store changes: {f['store_changes']}")
    for d in f["store_diffs"]:
        print(f"  {d}")
    print(
        f"honest sites finished: {f['honest_sites_finished']} (exit codes "
        f"{f['honest_exit_codes']}; digest {str(f['final_digest'])[:16]}, reference "
        f"{str(f['reference_digest'])[:16]})"
    )
    print(
        f"time: fuzzed run {f['seconds_fuzzed_run']} s, reference run "
        f"{f['seconds_reference_run']} s, total {f['seconds_total']} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chaos.py fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000, help="hostile messages in all")
    p.add_argument("--rounds", type=int, default=10, help="rounds of the honest job")
    p.add_argument("--quick", action="store_true", help="300 messages over 3 rounds")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the messages and mutations (not the job id some of them carry)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--work", type=Path, help="keep the run folders and logs here")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 300, 3
    if args.messages < args.rounds or args.rounds < 2:
        p.error("need at least 2 rounds and one message per round")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chaos-fuzz-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pki = Pki.make(work / "pki", [*HONEST, HOSTILE])
        ref = run_job(work / "reference", pki, args.rounds, None)
        fuzzer = Fuzzer(pki, args.messages, args.rounds, random.Random(args.seed))
        fuzzed = run_job(work / "fuzzed", pki, args.rounds, fuzzer)
        f = figures(ref, fuzzed, fuzzer, time.perf_counter() - t0)
    report(f)
    if args.json:
        args.json.write_text(json.dumps(f, indent=2) + "\n")
    why = failed(f)
    for reason in why:
        print(f"FAILED: {reason}")
    return 1 if why else 0


if __name__ == "__main__":
    raise SystemExit(main())
