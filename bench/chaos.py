"""Chaos benchmark of a deployed server (issue: hardening): ``python bench/chaos.py PART``.

- ``load``: one load-generator process holds N mutual-TLS site connections (default 100,
  500 and 1000) while the server runs rounds across all of them; round time, server
  memory and CPU, refusals.
- ``faults``: sites SIGKILLed or stalled every round and the server SIGKILLed twice and
  resumed; the final model must equal the run without server kills.
- ``fuzz``: at least 10,000 hostile messages from enrolled and unauthenticated peers; no
  crash, no change to the store, honest sites finish.

Each part is a module of its own (``_chaos_load.py``, ``_chaos_faults.py``,
``_chaos_fuzz.py``) with its own options (``python bench/chaos.py PART --help``) and exit
status: non-zero when its target is missed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = {"load": "_chaos_load", "faults": "_chaos_faults", "fuzz": "_chaos_fuzz"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in PARTS:
        print(__doc__)
        print(f"usage: python bench/chaos.py {{{','.join(PARTS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(PARTS[args[0]])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
