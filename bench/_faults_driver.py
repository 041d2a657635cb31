"""One run of the chaos fault benchmark: a real server, real sites, faults from outside.

The driver follows the job round by round. Every site announces each fit request with a
marker and waits (bench/_chaos_sites.py). Once all sites of round r have announced it, the
driver enacts the plan's fates from outside: SIGKILL (the site is restarted at once as a
fresh ``consortia client``, and the server is seen to have dropped it before anything goes
on) or SIGSTOP (thawed and released once the round is over). Only then are the healthy
sites released; the job's ``min_replies`` equals their number and its grace period is 0,
so the phase ends when the last of them has answered: never before, never later. In a
round chosen for it the server is SIGKILLed while the round is in flight, every waiting
site is released, and the server is started again with ``--resume``; the sites reconnect
by themselves and the round is played again, with the same fates.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _chaos_sites import CHAOS_DIR_ENV
from _faults_plan import Plan
from _faults_procs import Proc, completed_rounds, free_port

APP = Path(__file__).resolve().parent / "_chaos_sites.py"
_POLL_S = 0.02
MARKER_TIMEOUT_S = 300.0  # the first round: a server and every site starting on a busy machine
ROUND_TIMEOUT_S = 300.0  # guards against a hang only: a healthy round takes well under 1 s
LEFT_TIMEOUT_S = 60.0


class FaultBenchError(RuntimeError):
    """The run could not go on (a process died, a site was never asked): said in words."""


@dataclass
class Counts:
    site_kills: int = 0
    site_stalls: int = 0
    server_kills: int = 0
    server_kill_rounds: list[int] = field(default_factory=list)


def job_text(plan: Plan, deadline_s: float) -> str:
    """The job file: every site asked every round; the phase ends when the healthy ones
    have answered (min_replies, grace 0), or at the deadline should one of them hang."""
    n = len(plan.sites)
    return f"""\
name = "chaos-faults"
rounds = {plan.rounds}
seed = {plan.seed}

[task]
framework = "numpy"
app = {json.dumps(str(APP))}

[train]
local_epochs = 1
lr = 0.3

[strategy]
preset = "fedavgm"
sites_per_round = {n}
min_sites = {n}
min_replies = {plan.healthy_per_round}
deadline_s = {deadline_s}
grace_s = 0
tolerate_failing_sites = true

[evaluation]
central_every = 1
"""


class FaultRun:
    def __init__(
        self, plan: Plan, pki: Path, folder: Path, kill_server_in: list[int], deadline_s: float
    ) -> None:
        self.plan = plan
        self.pki = pki
        self.out = folder / "run"
        self.markers = folder / "markers"
        self.logs = folder / "logs"
        for d in (self.markers, self.logs):
            d.mkdir(parents=True)
        self.job = folder / "job.toml"
        self.job.write_text(job_text(plan, deadline_s))
        self.kill_server_in = set(kill_server_in)
        self.port = free_port()
        self.sites: dict[str, Proc] = {}
        self.servers: list[Proc] = []
        self.starts: dict[str, int] = {}
        self.stopped: set[str] = set()
        self.counts = Counts()

    # ---- processes -----------------------------------------------------------------------

    @property
    def server(self) -> Proc:
        return self.servers[-1]

    def _start_server(self, resume: bool) -> None:
        args = [
            "server",
            str(self.job),
            "--address",
            f"127.0.0.1:{self.port}",
            "--pki",
            str(self.pki),
            "--out",
            str(self.out),
            "--min-sites",
            str(len(self.plan.sites)),
            "--heartbeat",
            "5",
        ]
        log = self.logs / f"server-{len(self.servers)}.log"
        self.servers.append(Proc([*args, *(["--resume"] if resume else [])], log))

    def _start_site(self, site: str) -> None:
        n = self.starts[site] = self.starts.get(site, -1) + 1
        args = [
            "client",
            "--server",
            f"127.0.0.1:{self.port}",
            "--site",
            site,
            "--pki",
            str(self.pki / "sites" / site),
            "--app",
            f"{APP}:make_site",
            "--heartbeat",
            "1",
            "--max-backoff",
            "0.3",
        ]
        log = self.logs / f"{site}-{n}.log"
        self.sites[site] = Proc(args, log, {CHAOS_DIR_ENV: str(self.markers)})

    def _kill_site(self, site: str, restart: bool) -> None:
        """SIGKILL a site; go on once the server has dropped its session (so the next round
        never goes to the dead one) and a fresh process for it is starting."""
        text = f"site {site} left"
        before = self.server.output().count(text)
        self.sites[site].kill()
        self._until(lambda: self.server.output().count(text) > before, LEFT_TIMEOUT_S, text)
        if restart:
            self._start_site(site)
        else:
            del self.sites[site]

    def _thaw(self, site: str) -> None:
        self.sites[site].signal(signal.SIGCONT)
        self.stopped.discard(site)

    def close(self) -> list[str]:
        """Wait a little for the sites to leave by themselves, then kill whatever is left;
        a site (not killed by the driver) that exited with an error is reported."""
        for site in list(self.stopped):
            self._thaw(site)
        end = time.monotonic() + 20
        problems = []
        for site, proc in self.sites.items():
            try:
                code: int | None = proc.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            if code not in (0, None):
                problems.append(f"site {site} exited with {code}:\n{proc.tail(800)}")
        for proc in [*self.sites.values(), *self.servers]:
            proc.kill()
        return problems

    # ---- the rounds ----------------------------------------------------------------------

    def run(self) -> None:
        self._start_server(resume=False)
        for site in self.plan.sites:
            self._start_site(site)
        for rnd in range(1, self.plan.rounds + 1):
            self._round(rnd)
        try:
            code = self.server.popen.wait(60)
        except subprocess.TimeoutExpired:
            raise FaultBenchError(
                f"the server did not exit after the last round\n{self.server.tail()}"
            ) from None
        if code != 0:
            raise FaultBenchError(f"the server exited with {code}\n{self.server.tail()}")

    def _round(self, rnd: int) -> None:
        fates = self.plan.fates(rnd)
        while True:
            markers = self._await_markers(rnd)
            kill_server = rnd in self.kill_server_in and rnd not in self.counts.server_kill_rounds
            for site, fate in fates.items():
                if fate == "kill":
                    # After the last round nobody would ask it anything: no restart.
                    self._kill_site(site, restart=kill_server or rnd < self.plan.rounds)
                    self.counts.site_kills += 1
                else:
                    self.sites[site].signal(signal.SIGSTOP)
                    self.stopped.add(site)
                    self.counts.site_stalls += 1
            if kill_server:
                self._kill_server(rnd, markers)
                continue  # the resumed server asks the round again
            for site in self.plan.healthy(rnd):
                _release(markers[site])
            self._await_completed(rnd)
            for site in fates:
                if site in self.stopped:
                    self._thaw(site)
                    _release(markers[site])  # its late reply is refused
            return

    def _kill_server(self, rnd: int, markers: dict[str, Path]) -> None:
        self.server.popen.send_signal(signal.SIGKILL)
        self.server.popen.wait(10)
        self.counts.server_kills += 1
        self.counts.server_kill_rounds.append(rnd)
        for site in list(self.stopped):
            self._thaw(site)
        for marker in markers.values():
            _release(marker)  # whatever they send goes to a dead stream
        self._start_server(resume=True)

    def _await_markers(self, rnd: int) -> dict[str, Path]:
        """Every site's announcement of this round's fit request (one each)."""
        found: dict[str, Path] = {}

        def all_in() -> bool:
            for path in sorted(self.markers.glob("*.wait")):
                info = json.loads(path.read_text())
                path.unlink()  # read once; the folder stays small over a long run
                site, asked = info["site"], info["round"]
                if asked != rnd or site in found:
                    raise FaultBenchError(
                        f"site {site} was asked for round {asked} while every site was to "
                        f"answer round {rnd} once (already: {sorted(found)})"
                    )
                found[site] = path
            return len(found) == len(self.plan.sites)

        def missing() -> list[str]:
            return sorted(set(self.plan.sites) - set(found))

        self._until(all_in, MARKER_TIMEOUT_S, f"round {rnd} fit requests", missing)
        return found

    def _await_completed(self, rnd: int) -> None:
        self._until(lambda: completed_rounds(self.out) >= rnd, ROUND_TIMEOUT_S, f"round {rnd}")

    def _until(
        self,
        done: Callable[[], bool],
        timeout: float,
        what: str,
        detail: Callable[[], list[str]] | None = None,
    ) -> None:
        end = time.monotonic() + timeout
        while not done():
            if not self.server.alive() and not done():
                raise FaultBenchError(
                    f"the server exited ({self.server.popen.returncode}) while waiting for "
                    f"{what}\n{self.server.tail()}"
                )
            if time.monotonic() > end:
                extra = f" (missing: {detail()})" if detail is not None else ""
                raise FaultBenchError(
                    f"timed out after {timeout:g} s waiting for {what}{extra}\n{self.server.tail()}"
                )
            time.sleep(_POLL_S)


def _release(marker: Path) -> None:
    marker.with_suffix(".go").touch()
