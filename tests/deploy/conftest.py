"""Fixtures for deployment tests: one PKI for the session, and processes that are always
stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_helpers import Proc

from consortia.security.pki import add_site, init_pki

SITE_NAMES = ("site-a", "site-b", "site-c", "hospital-a", "hospital-b", "hospital-c", "hostile")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = init_pki(tmp_path_factory.mktemp("deploy-pki") / "pki")
    for s in SITE_NAMES:
        add_site(d, s)
    return d


@pytest.fixture()
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a ``consortia`` process; all are killed (if still running) at teardown."""
    procs: list[Proc] = []

    def start(name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(args, tmp_path / f"{name}.log", env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
