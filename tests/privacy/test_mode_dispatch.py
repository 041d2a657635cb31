"""A privacy mode string is read in one place: the mechanisms' registry.

Everywhere else asks the job's mechanism object. The schema and wire checks in ``core``
sit below the privacy layer and cannot ask it; they ask the mode's facts
(``consortia.core.privacy_modes.MODES``), which each mechanism class declares as its own.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

import consortia
from consortia.core.config import PrivacyConfig
from consortia.core.privacy_modes import MODES as FACTS
from consortia.privacy.mechanisms import MECHANISMS

SRC = Path(consortia.__file__).parent
MODES = r"""["'](?:central|distributed|local)["']"""
COMPARED = re.compile(
    rf"""mode["')\]]*\s*(?:==|!=|\bin\b|\bnot in\b)\s*\(?\s*{MODES}"""
    rf"""|{MODES}\s*(?:==|!=)\s*[\w.]*mode\b"""
)
# A mode string as a dict key: dispatch by table instead of by comparison.
KEYED = re.compile(rf"{MODES}\s*:")
# Where a mode's name may be written: its mechanism class and core's facts.
ALLOWED = ("privacy/mechanisms/", "core/privacy_modes.py")


def _hits(pattern: re.Pattern[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(ALLOWED):
            continue
        hits = len(pattern.findall(path.read_text()))
        if hits:
            found[rel] = hits
    return found


def test_no_mode_string_is_compared_outside_the_registry() -> None:
    found = _hits(COMPARED)
    assert not found, (
        f"privacy mode strings compared outside consortia/privacy/mechanisms: {found}; "
        "ask the job's mechanism object (consortia.privacy.mechanisms), or in core the "
        "mode's facts (consortia.core.privacy_modes.MODES)"
    )


def test_no_table_is_keyed_by_mode_outside_the_registry() -> None:
    found = _hits(KEYED)
    assert not found, (
        f"privacy mode strings used as keys outside consortia/privacy/mechanisms: {found}; "
        "put the per-mode value on the mechanism class"
    )


def test_the_registry_and_cores_facts_name_the_same_modes() -> None:
    assert list(MECHANISMS) == list(FACTS)
    # pydantic needs the names spelt out in PrivacyConfig.mode; they must be MODES's.
    assert set(typing.get_args(PrivacyConfig.model_fields["mode"].annotation)) == set(FACTS)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_each_mechanism_declares_cores_facts_for_its_mode(name: str) -> None:
    cls = MECHANISMS[name]
    assert cls.facts is FACTS[name]
    assert cls.name == name and cls.unit == FACTS[name].unit


@pytest.mark.parametrize("name", sorted(FACTS))
def test_a_threat_statement_is_a_copy_the_report_cannot_alter(name: str) -> None:
    cls = MECHANISMS[name]
    original = cls.threat_statement()
    statement = cls.threat_statement()
    assert statement["holds_against"], name
    statement["holds_against"].append("anyone at all")
    statement["does_not_hold_against"].append("no one")
    assert cls.threat_statement() == original


def test_the_pattern_finds_what_it_forbids() -> None:
    for line in (
        'if p.mode == "central":',
        "if cfg.mode != 'local':",
        'if report.get("mode") in ("central", "distributed")',
        'x = "distributed" == self.mode',
    ):
        assert COMPARED.search(line), line
    assert not COMPARED.search('deployed = self.options.mode == "deployment"')
    assert KEYED.search('    "distributed": DISTRIBUTED_WITHOUT_SECURE_AGGREGATION,')
    assert not KEYED.search('if mode == "central" and bounded:')
