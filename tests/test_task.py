"""Loading a user's app: its own folder is importable; a failed import is not cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortia.task import load_app


def test_an_app_can_import_the_modules_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "hospital_data.py").write_text("ROWS = 42\n")
    (tmp_path / "app.py").write_text("import hospital_data\n\nROWS = hospital_data.ROWS\n")
    assert load_app("app.py", tmp_path).ROWS == 42


def test_an_app_that_fails_to_import_is_imported_afresh_once_fixed(tmp_path: Path) -> None:
    app = tmp_path / "flaky.py"
    app.write_text("raise RuntimeError('database not mounted')\n")
    with pytest.raises(RuntimeError, match="database not mounted"):
        load_app("flaky.py", tmp_path)
    app.write_text("READY = True\n")
    assert load_app("flaky.py", tmp_path).READY is True
