"""The accuracy curve as inline SVG: a line per metric over the rounds.

Inline SVG rather than a matplotlib PNG: matplotlib is not a dependency of consortia
(only of the bench extra), the page stays text (diffable, searchable, a few kilobytes),
it scales sharply when printed, and every label is escaped text in the page itself.
Metric names come from the run's records and are treated as hostile: escaped with
``html.escape`` in text nodes only, never placed in an attribute or a style.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 64  # margins: axis labels left, legend below
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _label(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.3g}"


def svg_chart(curves: Sequence[dict[str, Any]], title: str = "accuracy per round") -> str:
    """An SVG element drawing ``curves`` ([{metric, points: [[round, value], ...]}]); an
    axis from 0 to 1 when every value lies in it (accuracies), else the values' range."""
    values = [float(v) for c in curves for _, v in c["points"]]
    rounds = [int(r) for c in curves for r, _ in c["points"]]
    if not values:
        raise ValueError("no points to draw")
    lo, hi = (0.0, 1.0) if min(values) >= 0 and max(values) <= 1 else (min(values), max(values))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    r0, r1 = min(rounds), max(rounds)
    span = max(r1 - r0, 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    height = HEIGHT + 16 * ((len(curves) - 1) // 3)  # one legend row per three curves

    def x(r: float) -> float:
        return LEFT + (r - r0) / span * plot_w

    def y(v: float) -> float:
        return TOP + (hi - v) / (hi - lo) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for v in _ticks(lo, hi):
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_label(v)}</text>'
        )
    step = max(1, span // 10)
    for r in range(r0, r1 + 1, step):
        parts.append(
            f'<text x="{x(r):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{r}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h + 32}" '
        'text-anchor="middle">round</text>'
    )
    for i, curve in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in curve["points"])
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        parts += [
            f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>'
            for r, v in curve["points"]
        ]
        lx = LEFT + 8 + 200 * (i % 3)
        ly = TOP + plot_h + 54 + 16 * (i // 3)
        parts.append(
            f'<rect x="{lx}" y="{ly - 9}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{lx + 18}" y="{ly - 4}">{escape(str(curve["metric"])[:40])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
