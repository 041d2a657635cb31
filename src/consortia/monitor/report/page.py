"""report.html: the report's JSON content as one self-contained page.

Self-contained: the CSS is inline, the chart is inline SVG, there is no script, and a
Content-Security-Policy forbids any fetch, script or outside resource, so the page reads
the same offline, archived or attached to an e-mail, and a mistake in escaping could
still not run code. Every value, and every key of the content's mappings, goes through
``html.escape`` before it reaches the page, and only into text nodes or quoted table
cells: site names, reasons and metric names come from sites and are hostile.
"""

from __future__ import annotations

from html import escape
from typing import Any

from consortia.monitor.report.chart import svg_chart

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { text-align: left; vertical-align: top; padding: .2em .8em .2em 0;
         border-bottom: 1px solid #eee; overflow-wrap: break-word; }
th { font-weight: 600; color: #444; }
.note { color: #555; font-style: italic; }
.ok { color: #176317; font-weight: 600; }
.fail { color: #a11; font-weight: 700; }
.chart text { font: 12px system-ui, sans-serif; fill: #333; }
ul { margin: .2em 0; padding-left: 1.2em; }
"""
PROSE = ("note", "statement", "listed")  # shown as paragraphs, not table rows


def _label(key: str) -> str:
    return escape(key.replace("_", " "))


def _value(value: Any) -> str:
    """Any JSON value as escaped HTML: mappings as tables, lists as tables or lists."""
    if value is None:
        return "<span class='note'>none</span>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if not value:
            return "<span class='note'>none</span>"
        rows = "".join(
            f"<tr><th>{_label(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<span class='note'>none</span>"
        if all(isinstance(v, dict) for v in value):
            return _rows(value)
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    return escape(str(value))


def _rows(items: list[dict[str, Any]]) -> str:
    """A list of records as one table, a column per key (in first-seen order)."""
    columns: list[str] = []
    for item in items:
        columns += [k for k in item if k not in columns]
    head = "".join(f"<th>{_label(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_value(item.get(c))}</td>" for c in columns) + "</tr>"
        for item in items
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(key: str, section: dict[str, Any]) -> str:
    parts = [f'<section id="{escape(key)}"><h2>{escape(str(section["title"]))}</h2>']
    if key == "ledger":
        cls = "ok" if section.get("verified") else "fail"
        parts.append(f'<p class="{cls}">{escape(str(section.get("result")))}</p>')
    if key == "accuracy":
        curves = section.get("curves") or []
        parts.append(
            f"<figure>{svg_chart(curves)}</figure>"
            if curves
            else "<p class='note'>metrics.jsonl holds no rounds: no curve to draw</p>"
        )
    rest = {k: v for k, v in section.items() if k not in ("title", *PROSE)}
    if key == "accuracy":
        last = {c["metric"]: c["points"][-1][1] for c in section.get("curves") or []}
        rest = {"source": section.get("source"), "after_the_last_round": last}
    parts.append(_value(rest))
    parts += [f"<p class='note'>{escape(str(section[k]))}</p>" for k in PROSE if k in section]
    parts.append("</section>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The page for ``report`` (``sections.build_report``'s content)."""
    sections = report["sections"]
    name = sections["job"].get("job_name") or "unnamed job"
    dp = "differential privacy" if report["differential_privacy"] else "no differential privacy"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>Compliance report: {escape(str(name))}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Compliance report: {escape(str(name))}</h1>"
        f"<p>{escape(str(report['format']))}; generated on "
        f"{escape(str(report['generated_on']))}; {dp}; run folder "
        f"<code>{escape(str(report['run_dir']))}</code></p>"
        + "".join(_section(k, s) for k, s in sections.items())
        + "</body></html>\n"
    )
