"""The compliance report's content (report.json) and its page's escaping.

A DP run's report must not say who took part in which round or how many; a tampered
ledger must show as failed at the entry that was changed; a site's name, a reason or a
metric name must never become markup.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# The ledger tests' own reader and operator rewrite (tests/ledger/ledger_helpers.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))
from ledger_helpers import entries as ledger_entries
from ledger_helpers import rewrite

from consortia.cli import main
from consortia.core.errors import ConsortiaError
from consortia.core.version import consortia_version
from consortia.ledger.chain import Entry, canonical_json, entry_hash
from consortia.ledger.sign import LedgerKey
from consortia.monitor.report import make_report, render_html, write_report
from consortia.monitor.report.chart import svg_chart
from consortia.monitor.report.sources import ReportError

SECTIONS = (
    "job",
    "participants",
    "agreements",
    "privacy",
    "secure_aggregation",
    "validation",
    "ledger",
    "accuracy",
)
SITE_ID = re.compile(r"site-\d{4}")
# Keys that would carry a round's participants, their number, or a site's participation.
PARTICIPATION = {
    "sites_asked",
    "per_site",
    "refusals",
    "round_refusals",
    "updates_accepted",
    "entries",
    "site_signatures_checked",
    "rounds_participated",
    "replies",
    "failures",
}
HOSTILE = '</td><script>alert(1)</script><img src=x onerror="alert(2)">'


def _copy(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock", "*-wal", "*-shm")))


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_every_section_is_there_and_states_the_records(dp_run: Path) -> None:
    report = make_report(dp_run)
    assert tuple(report["sections"]) == SECTIONS
    s = report["sections"]
    entries = ledger_entries(dp_run)
    created = entries[0].data()
    privacy = json.loads((dp_run / "privacy.json").read_text())
    summary = json.loads((dp_run / "summary.json").read_text())
    job = s["job"]
    assert job["job_sha256"] == created["job_sha256"] and job["job_file_matches_ledger"]
    assert job["final_model_digest"] == summary["model_digest"]
    assert job["consortia_version"] == consortia_version() == created["consortia_version"]
    assert s["participants"]["federation_size"] == 6
    joined = {e.data()["site"] for e in entries if e.kind == "site_joined"}
    assert [p["site"] for p in s["participants"]["sites"]] == sorted(joined)
    dua = s["agreements"]["declared_in_job_file"]
    assert [d["reference"] for d in dua] == ["DUA-2026-042"] and dua[0]["expires"] == "2027-06-30"
    # The guarantee is privacy.json's, word for word, with its threat model.
    for key in ("neighbouring", "level", "epsilon", "delta", "outside_guarantee"):
        assert s["privacy"][key] == privacy[key], key
    assert s["privacy"]["threat_model"] == privacy["threat_model"]
    assert s["secure_aggregation"]["used"] is False
    assert s["secure_aggregation"]["statement"].startswith("not used")
    assert s["ledger"]["verified"] and s["ledger"]["head_hash"] == entries[-1].hash
    rows = [json.loads(line) for line in (dp_run / "metrics.jsonl").read_text().splitlines()]
    [curve] = s["accuracy"]["curves"]
    assert curve["metric"] == "accuracy"
    assert curve["points"] == [[r["round"], r["accuracy"]] for r in rows]


def test_a_dp_report_names_no_round_participants_and_counts_none(
    dp_run: Path, plain_run: Path
) -> None:
    dp = make_report(dp_run)
    assert dp["differential_privacy"]
    assert not _keys(dp) & PARTICIPATION
    # Sites are named only where they are listed by certificate (and their agreements).
    for name, section in dp["sections"].items():
        if name not in ("participants", "agreements"):
            assert not SITE_ID.search(json.dumps(section)), name
    assert "site_joined" not in json.dumps(dp["sections"]["participants"]["sites"])
    html = render_html(dp)
    assert "sites asked" not in html and "per site" not in html
    # The same report without DP does give them (so the check above can fail).
    plain = make_report(plain_run)
    assert not plain["differential_privacy"]
    assert {"per_site", "updates_accepted", "entries"} <= _keys(plain)
    accepted = sum(e.kind == "update_received" for e in ledger_entries(plain_run))
    assert plain["sections"]["validation"]["updates_accepted"] == accepted > 0


def test_a_tampered_ledger_shows_as_failed_at_that_entry(dp_run: Path, tmp_path: Path) -> None:
    run = _copy(dp_run, tmp_path / "run")
    rows = ledger_entries(run)
    i = next(e.index for e in rows if e.kind == "round_closed")
    rows[i] = dataclasses.replace(rows[i], payload=rows[i].payload.replace('"round":', '"round": '))
    rewrite(run, rows)
    assert main(["report", str(run)]) == 1  # the report is written, and says it failed
    report = json.loads((run / "report.json").read_text())
    ledger = report["sections"]["ledger"]
    assert not ledger["verified"] and ledger["problem"]["index"] == i
    assert ledger["result"].startswith(f"FAILED at entry {i} (round_closed)")
    assert f"FAILED at entry {i} (round_closed)" in (run / "report.html").read_text()


def _resign(run: Path, edit: Any) -> None:
    """Rewrite every payload with ``edit`` and sign the chain again with the run's own
    ledger key: what a server would have recorded, so the ledger still verifies."""
    key = LedgerKey.load(run)
    prev, prev_sig, out = "0" * 64, "", []
    old = ledger_entries(run)
    prev = old[0].prev
    for e in old:
        payload = canonical_json(edit(e.data()))
        digest = entry_hash(e.index, prev, prev_sig, e.time, e.kind, payload)
        sig = key.sign(bytes.fromhex(digest))
        out.append(Entry(e.index, prev, e.time, e.kind, payload, digest, sig))
        prev, prev_sig = digest, sig
    rewrite(run, out)


def _hostile_site(data: dict[str, Any]) -> dict[str, Any]:
    return {k: HOSTILE if v == "site-0001" else v for k, v in data.items()}


def test_hostile_names_reasons_and_metrics_are_escaped(plain_run: Path, tmp_path: Path) -> None:
    run = _copy(plain_run, tmp_path / "run")
    _resign(run, _hostile_site)
    summary = json.loads((run / "summary.json").read_text())
    summary["policy_refusals"]["join"] = {HOSTILE: "site policy: " + HOSTILE}
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r | {HOSTILE + "accuracy": 0.5}) + "\n" for r in rows)
    )
    html_path, _, report = write_report(run)
    assert report["sections"]["ledger"]["verified"]  # a name the server really recorded
    assert HOSTILE in [p["site"] for p in report["sections"]["participants"]["sites"]]
    html = html_path.read_text()
    assert "<script" not in html.lower() and "<img" not in html.lower()
    escaped = "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror="
    assert html.count(escaped) >= 4  # participants, validation, join refusal, chart legend


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    p.close()
    return p


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=40))
@example(name=HOSTILE)
@example(name="<b>site</b> & <!-- -->")
def test_any_site_name_stays_text(plain_run: Path, name: str) -> None:
    """Whatever a site calls itself, the page has the same elements and shows the name."""
    report = make_report(plain_run)
    baseline = _parse(render_html(report)).tags
    report["sections"]["participants"]["sites"][0]["site"] = name
    report["sections"]["accuracy"]["curves"][0]["metric"] = name
    page = _parse(render_html(report))
    assert page.tags == baseline
    # Line ends may be normalised on the way (\r\n, \r); every other character arrives.
    assert _lines(name) in _lines("".join(page.text))


def test_agreements_are_held_against_the_report_date(dp_run: Path) -> None:
    before = make_report(dp_run, today=dt.date(2027, 6, 30))["sections"]["agreements"]
    after = make_report(dp_run, today=dt.date(2027, 7, 1))["sections"]["agreements"]
    [b], [a] = before["declared_in_job_file"], after["declared_in_job_file"]
    assert b["held_when_job_ended"] and a["held_when_job_ended"]
    assert not b["expired_on_report_date"] and a["expired_on_report_date"]
    assert "round_refusals" not in before and "note" in before  # DP: no round refusals


def test_a_folder_that_is_not_a_run_is_refused_by_name(dp_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConsortiaError, match=r"state\.sqlite"):
        make_report(tmp_path)
    with pytest.raises(ReportError, match="no such folder"):
        make_report(tmp_path / "absent")
    run = _copy(dp_run, tmp_path / "run")
    (run / "privacy.json").write_text("[1, 2")
    with pytest.raises(ReportError, match=r"privacy\.json: not readable JSON"):
        make_report(run)
    (run / "privacy.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"privacy\.json: a JSON object was expected"):
        make_report(run)


def test_the_chart_scales_to_its_values_and_refuses_nothing_to_draw() -> None:
    accuracy = svg_chart([{"metric": "accuracy", "points": [[1, 0.2], [2, 0.9]]}])
    assert ">1.00</text>" in accuracy and ">0.00</text>" in accuracy  # an accuracy axis
    loss = svg_chart([{"metric": "loss", "points": [[1, 3.0], [2, 5.0]]}])
    assert ">5.00</text>" in loss and ">3.00</text>" in loss and ">1.00</text>" not in loss
    assert loss.count("<circle") == 2
    with pytest.raises(ValueError, match="no points"):
        svg_chart([])
