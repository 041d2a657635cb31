"""The ``consortia`` command. Each sub-command lives in its own module with ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from consortia.core.errors import ConsortiaError

# Each module defines ``register(subparsers)``, adding its parser with ``func=handler``
# where ``handler(args) -> int`` is the exit status.
_COMMAND_MODULES: tuple[str, ...] = (
    "new",
    "simulate",
    "keys",
    "privacy",
    "analytics",
    "server",
    "client",
    "audit",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consortia", description="Privacy-preserving collaborative learning."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"consortia.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConsortiaError as exc:
        print(f"consortia: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("consortia: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
