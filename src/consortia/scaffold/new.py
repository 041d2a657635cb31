"""Writes a project that ``consortia simulate`` runs at once and that shows where each
piece goes: the task (model and, for the server, a test split), the site app (where a
real site loads its own records), the job file, and a README with the commands.

The templates are plain files in this package: ``templates/<framework>/app.py`` (the only
file that differs by framework) and ``templates/common/`` (job file, site app, README),
copied with the project's name, framework and trainer filled in: what a user reads is
what runs, and a test runs each framework's project.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from consortia.core.errors import ConfigError

# framework -> how its site app builds the trainer from the task module (TASK)
_TRAINERS = {
    "torch": "consortia.TorchTrainer(TASK.make_model)",
    "sklearn": "consortia.SklearnTrainer(TASK.make_model)",
    "numpy": "consortia.FunctionTrainer(TASK.make_model, TASK.fit, TASK.evaluate)",
}
FRAMEWORKS = tuple(_TRAINERS)
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
    templates = resources.files("consortia.scaffold") / "templates"
    fill = {"{{name}}": name, "{{framework}}": framework, "{{trainer}}": _TRAINERS[framework]}
    written = []
    for file in _FILES:
        own = templates / framework / file
        text = (own if own.is_file() else templates / "common" / file).read_text()
        for key, value in fill.items():
            text = text.replace(key, value)
        target = folder / file
        target.write_text(text)
        written.append(target)
    return written
