"""Fixtures for gRPC fleet tests: a PKI, a live fleet on a free loopback port, site threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_site_helpers import SITES, SiteRun, SiteStarter

from consortia.fleet.base import SiteHandler
from consortia.fleet.grpc import GrpcFleet, run_site
from consortia.security.pki import add_site, init_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = init_pki(tmp_path_factory.mktemp("pki") / "pki")
    for s in (*SITES, "hostile"):
        add_site(d, s)
    return d


@pytest.fixture()
def fleet(pki: Path) -> Iterator[GrpcFleet]:
    f = GrpcFleet(
        "127.0.0.1:0", job_id="job-1", pki_dir=pki, heartbeat_s=0.5, chunk_bytes=64 * 1024
    )
    yield f
    f.close()


@pytest.fixture()
def start_site(pki: Path) -> Iterator[SiteStarter]:
    """Start ``run_site`` in a thread; every started site is stopped and joined at teardown."""
    started: list[SiteRun] = []
    errors: list[BaseException] = []

    def start(
        fleet: GrpcFleet, site: SiteHandler, site_dir: Path | None = None, **kw: Any
    ) -> SiteRun:
        kw.setdefault("heartbeat_s", 0.5)
        kw.setdefault("initial_backoff_s", 0.05)
        kw.setdefault("max_backoff_s", 0.2)

        def body() -> None:
            try:
                run.result = run_site(
                    fleet.address,
                    site,
                    site_dir or pki / "sites" / site.site_id,
                    stop=run.stop,
                    **kw,
                )
            except BaseException as exc:  # reported at teardown: a site must not crash
                errors.append(exc)

        run = SiteRun(threading.Thread(target=body, daemon=True), threading.Event())
        run.thread.start()
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop.set()
    for run in started:
        run.thread.join(5)
        assert not run.thread.is_alive(), "run_site did not stop within 5 s of its stop event"
    assert not errors, f"a site thread raised: {errors!r}"
