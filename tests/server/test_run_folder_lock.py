"""One run folder, one process: a second server (or simulation) there is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortia import simulate
from consortia.server.run_folder import RunFolder, RunFolderBusy

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy_job.toml"


def test_a_folder_in_use_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "run"
    other = RunFolder(out)
    other.lock()  # what a running server holds
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunFolderBusy, match="in use by another consortia process"):
        simulate(TOY, out=out, rounds=1, debug=True)
    assert sorted(p.name for p in out.iterdir()) == before
    other.unlock()
    result = simulate(TOY, out=out, rounds=1, debug=True)  # free again: it runs
    assert result.summary["rounds_completed"] == 1
    again = RunFolder(out)
    again.lock()  # and the finished run let go of it
    again.unlock()
