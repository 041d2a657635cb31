"""Real ``consortia server`` / ``consortia client`` processes for the chaos benchmark, with
their output in files and the server's store read from outside, read-only, as an auditor
would. The deployment tests build on it too (tests/deploy/deploy_helpers.py); a benchmark
never imports from tests/."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A ``consortia`` sub-command in its own process; output goes to a file (a pipe nobody
    reads could fill up and block the process)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "consortia.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=REPO,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.log.name} ---\n{self.output()[-chars:]}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap (a stopped process dies of SIGKILL too)."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)


def query(out: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows from the server's store, opened read-only; none while it does not exist yet."""
    path = out / "state.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        db.close()


def completed_rounds(out: Path) -> int:
    rows = query(out, "SELECT COUNT(*) FROM rounds WHERE status = 'completed'")
    return int(rows[0][0]) if rows else 0
