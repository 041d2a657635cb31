"""A privacy mode string is read in one place: the mechanisms' registry.

Everywhere else asks the job's mechanism object. The schema and wire checks in ``core``
sit below the privacy layer and cannot ask it; their comparisons are counted here so that
they can only go, never grow.
"""

from __future__ import annotations

import re
from pathlib import Path

import consortia

SRC = Path(consortia.__file__).parent
MODES = r"""["'](?:central|distributed|local)["']"""
COMPARED = re.compile(
    rf"""mode["')\]]*\s*(?:==|!=|\bin\b|\bnot in\b)\s*\(?\s*{MODES}"""
    rf"""|{MODES}\s*(?:==|!=)\s*[\w.]*mode\b"""
)
# Below the privacy layer: the job file's validators and the message codec's checks.
CORE_ALLOWED = {"core/config.py": 12, "core/messages.py": 3}


def _comparisons() -> dict[str, int]:
    found: dict[str, int] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("privacy/mechanisms/"):
            continue
        hits = len(COMPARED.findall(path.read_text()))
        if hits:
            found[rel] = hits
    return found


def test_no_mode_string_is_compared_outside_the_registry() -> None:
    found = _comparisons()
    outside = {k: v for k, v in found.items() if k not in CORE_ALLOWED}
    assert not outside, (
        f"privacy mode strings compared outside consortia/privacy/mechanisms: {outside}; "
        "ask the job's mechanism object (consortia.privacy.mechanisms) instead"
    )
    for rel, allowed in CORE_ALLOWED.items():
        assert found.get(rel, 0) <= allowed, f"{rel}: new mode-string comparisons"


def test_the_pattern_finds_what_it_forbids() -> None:
    for line in (
        'if p.mode == "central":',
        "if cfg.mode != 'local':",
        'if report.get("mode") in ("central", "distributed")',
        'x = "distributed" == self.mode',
    ):
        assert COMPARED.search(line), line
    assert not COMPARED.search('deployed = self.options.mode == "deployment"')
