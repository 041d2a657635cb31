"""Where a long-running command's lines go: a terminal, or a file an operator reads later.

On a terminal, rich log lines; written to a file or a pipe, plain lines that are never
wrapped (rich would wrap them at 80 columns, breaking every grep of a log). gRPC's own
C-core logging is off unless ``--verbose``: its lines are for gRPC's developers, and our
own log already says what a connection did.
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler


def setup_output(verbose: bool) -> Console:
    """Console and logging for ``consortia server`` and ``client``; call before gRPC loads."""
    if not verbose:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    tty = sys.stdout.isatty()
    console = Console(soft_wrap=not tty)
    handler: logging.Handler
    if tty:
        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    return console
