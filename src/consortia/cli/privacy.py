"""``consortia privacy epsilon|calibrate``: plan a private job before running it.

``epsilon``: what a (noise multiplier, sampling rate, rounds) choice costs at delta, from both
accountants. ``calibrate``: the noise multiplier that meets a target epsilon. Both print a
table, or with ``--json`` exactly one JSON object on stdout for scripts.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy", help="privacy planning: epsilon of a setting, or calibration")
    psub = p.add_subparsers(dest="privacy_command", required=True)

    e = psub.add_parser("epsilon", help="epsilon at delta of Poisson-sampled Gaussian rounds")
    e.add_argument("--noise", type=float, required=True, help="noise multiplier z")
    _common(e)
    e.set_defaults(func=run_epsilon)

    c = psub.add_parser("calibrate", help="noise multiplier that meets a target epsilon")
    c.add_argument("--epsilon", type=float, required=True, help="target epsilon")
    c.add_argument(
        "--accountant",
        choices=("rdp", "pld"),
        default="rdp",
        help="accountant to calibrate with (default rdp)",
    )
    _common(c)
    c.set_defaults(func=run_calibrate)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, required=True, help="sampling rate q per round")
    p.add_argument("--rounds", type=int, required=True, help="number of rounds (or steps)")
    p.add_argument("--delta", type=float, required=True, help="target delta")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_epsilon(args: argparse.Namespace) -> int:
    from consortia.privacy.accountant import epsilon_for

    eps = epsilon_for(args.noise, args.rate, args.rounds, args.delta)
    if args.json:
        print(json.dumps({"epsilon_rdp": eps["rdp"], "epsilon_pld": eps["pld"]}))
        return 0
    table = Table(title="Privacy cost (Poisson-sampled Gaussian)")
    table.add_column("setting")
    table.add_column("value", justify="right")
    for name, value in (
        ("noise multiplier", f"{args.noise:g}"),
        ("sampling rate", f"{args.rate:g}"),
        ("rounds", str(args.rounds)),
        ("delta", f"{args.delta:g}"),
        ("epsilon (RDP)", _fmt(eps["rdp"])),
        ("epsilon (PLD)", _fmt(eps["pld"])),
    ):
        table.add_row(name, value)
    Console().print(table)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from consortia.privacy.accountant import calibrate, epsilon_for

    z = calibrate(args.epsilon, args.delta, args.rate, args.rounds, accountant=args.accountant)
    if args.json:
        print(json.dumps({"noise_multiplier": z}))
        return 0
    eps = epsilon_for(z, args.rate, args.rounds, args.delta)
    table = Table(title=f"Calibrated noise ({args.accountant.upper()} accountant)")
    table.add_column("setting")
    table.add_column("value", justify="right")
    for name, value in (
        ("target epsilon", f"{args.epsilon:g}"),
        ("delta", f"{args.delta:g}"),
        ("sampling rate", f"{args.rate:g}"),
        ("rounds", str(args.rounds)),
        ("noise multiplier", f"{z:.4f}"),
        ("epsilon (RDP)", _fmt(eps["rdp"])),
        ("epsilon (PLD)", _fmt(eps["pld"])),
    ):
        table.add_row(name, value)
    Console().print(table)
    return 0
