"""The package's public API imports without torch and exposes the trainer lazily."""

from __future__ import annotations

import subprocess
import sys

import consortia.privacy as privacy


def test_public_names_resolve() -> None:
    for name in privacy.__all__:
        assert getattr(privacy, name) is not None


def test_import_does_not_load_torch() -> None:
    code = "import sys, consortia.privacy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
