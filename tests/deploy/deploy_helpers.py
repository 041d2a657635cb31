"""Helpers for deployment tests: real ``consortia server`` / ``consortia client`` processes
on loopback, with their output in files and every wait bounded (imported by name, so the
module name is unique across the test tree)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REPO = HERE.parent.parent

# Processes, ports and store readers are the chaos benchmark's (bench/_faults_procs.py),
# written once for both.
sys.path.insert(0, str(REPO / "bench"))
from _faults_procs import Proc as BenchProc  # noqa: E402
from _faults_procs import completed_rounds, free_port, query  # noqa: E402,F401

TOY_JOB = HERE / "toy_job.toml"
TOY_APP = f"{HERE / 'toy_app.py'}:make_site"
DIGITS_JOB = REPO / "examples" / "digits" / "job.toml"
DIGITS_APP = f"{REPO / 'examples' / 'digits' / 'site.py'}:make_site"


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Proc(BenchProc):
    """A ``consortia`` sub-command in its own process (the chaos benchmark's, which writes
    its output to a file), with the waits the tests need."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(args, log, env)
        self.args = args

    def wait_for_text(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None and text not in self.output():
                raise AssertionError(f"process ended before printing {text!r}:\n{self.output()}")
            return text in self.output()

        wait_until(seen, timeout, f"{text!r} in {self.log.name}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.log.name} still running after {timeout:g} s:\n{self.output()[-3000:]}"
            ) from None


def server_args(
    job: Path, port: int, pki: Path, out: Path, *extra: str, heartbeat: float = 1.0
) -> list[str]:
    return [
        "server",
        str(job),
        "--address",
        f"127.0.0.1:{port}",
        "--pki",
        str(pki),
        "--out",
        str(out),
        "--heartbeat",
        str(heartbeat),
        *extra,
    ]


def client_args(port: int, site: str, site_dir: Path, app: str, *extra: str) -> list[str]:
    return [
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--site",
        site,
        "--pki",
        str(site_dir),
        "--app",
        app,
        "--heartbeat",
        "1",
        "--max-backoff",
        "0.3",
        *extra,
    ]


# Distributed DP for the three toy sites, all in every round (deployment needs population).
DISTRIBUTED = """
[privacy]
mode = "distributed"
sample_rate = 1.0
clip_norm = 5.0
noise_multiplier = 2.0
population = 3
"""
