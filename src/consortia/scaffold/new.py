"""Writes a project that ``consortia simulate`` runs at once and that shows where each
piece goes: the task (model and, for the server, a test split), the site app (where a
real site loads its own records), the job file, and a README with the commands.

The templates are plain files in this package (``templates/<framework>/``), copied with
the project's name filled in: what a user reads is what runs, and a test runs each one.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from consortia.core.errors import ConfigError

FRAMEWORKS = ("torch", "sklearn", "numpy")
_FILES = ("job.toml", "app.py", "site.py", "README.md")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


def new_project(folder: str | Path, framework: str, name: str | None = None) -> list[Path]:
    """Create ``folder`` with a project for ``framework``; returns the files written.
    Refuses a folder that already holds anything (nothing is overwritten)."""
    if framework not in FRAMEWORKS:
        raise ConfigError(f"--framework {framework!r}: choose from {', '.join(FRAMEWORKS)}")
    folder = Path(folder)
    name = name or folder.resolve().name.lower().replace("_", "-")
    if not _NAME.match(name):
        raise ConfigError(
            f"project name {name!r}: use lower-case letters, digits and - (pass --name)"
        )
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty; choose a new folder (nothing was written)")
    folder.mkdir(parents=True, exist_ok=True)
    source = resources.files("consortia.scaffold") / "templates" / framework
    written = []
    for file in _FILES:
        text = (source / file).read_text().replace("{{name}}", name)
        target = folder / file
        target.write_text(text)
        written.append(target)
    return written
