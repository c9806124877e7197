"""Charts drawn on the server as inline SVG: no chart library, no script, nothing the page's CSP would refuse
(colours are presentation attributes and classes of portal.css, never `style`). Each chart stands beside a
table with the same numbers, which is what screen readers and downloads use; the SVG is `aria-hidden`."""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup, escape

SERIES = ("#1f5fa8", "#d9822b", "#b3261e", "#2e7d32")


def _nice(top: float) -> float:
    """A round axis maximum at or above `top` (1, 2, 5 × a power of ten)."""
    if top <= 0:
        return 1
    if top <= 1:
        return 1  # counts: an axis step is at least one
    power = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 5, 10):
        if top <= step * power:
            return step * power
    return 10 * power


def _num(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:,.1f}"


def columns(labels: list[str], series: list[tuple[str, list[float]]], *, title: str, width: int = 640,
            height: int = 240) -> Markup:
    """Grouped columns: one group a label (a day), one column a series, with a legend and a y axis."""
    left, right, top, bottom = 48, 8, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = 4 * _nice(max([v for _, vs in series for v in vs] + [0]) / 4)  # four even steps of a round size
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" aria-hidden="true" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i in range(5):
        v = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d5dbe3" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{_num(v)}</text>')
    group = plot_w / max(1, len(labels))
    bar = max(2.0, group * 0.8 / max(1, len(series)))
    for gi, label in enumerate(labels):
        x0 = left + gi * group + group * 0.1
        for si, (_, values) in enumerate(series):
            v = values[gi]
            h = plot_h * v / peak
            parts.append(f'<rect x="{x0 + si * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                         f'fill="{SERIES[si % len(SERIES)]}"/>')
        if len(labels) <= 10 or gi % math.ceil(len(labels) / 10) == 0:
            parts.append(f'<text x="{x0 + group * 0.4:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" '
                         f'fill="#333">{escape(label[5:])}</text>')
    lx = left
    for si, (name, _) in enumerate(series):
        parts.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{SERIES[si % len(SERIES)]}"/>')
        parts.append(f'<text x="{lx + 16}" y="18" font-size="12" fill="#222">{escape(name)}</text>')
        lx += 24 + 13 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def bars(rows: list[tuple[str, float]], *, title: str, width: int = 520, percent: bool = False,
         empty: str = "暂无数据") -> Markup:
    """Horizontal bars, one a row (label, value); `percent`: values are rates in [0, 1] on a 0–100 % axis."""
    label_w, right, row_h = 200, 64, 22
    height = max(1, len(rows)) * row_h + 8
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" aria-hidden="true" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    if not rows:
        parts.append(f'<text x="8" y="18" font-size="12" fill="#555">{escape(empty)}</text>')
    peak = 1.0 if percent else _nice(max([v for _, v in rows] + [0]))
    plot_w = width - label_w - right
    for i, (label, v) in enumerate(rows):
        y = 4 + i * row_h
        shown = label if len(label) <= 16 else label[:15] + "…"
        w = plot_w * (v or 0) / peak
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12" fill="#222">{escape(shown)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{plot_w}" height="{row_h - 8}" fill="#eef1f5"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{SERIES[0]}"/>')
        text = "—" if v is None else (f"{v * 100:.1f}%" if percent else _num(v))
        parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + 15}" font-size="12" fill="#222">{text}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


STATE_COLOURS = {"up": ("#e8f4ea", "#2e7d32"), "down": ("#fdecea", "#b3261e"), "unknown": ("#f1f3f6", "#6b7280"),
                 "self": ("#e8f0fb", "#1f5fa8")}


def federation(center: dict[str, Any], parent: dict[str, Any] | None, children: list[dict[str, Any]],
               *, width: int = 900) -> Markup:
    """This node, its parent above and its children below: a box each, coloured by state (a peer that is down
    is red, thick-bordered and says 无法连接), with its last contact, outbox depth and replication lag."""
    box_w, box_h = 200, 92
    n = max(1, len(children))
    width = max(width, n * (box_w + 20) + 20)
    rows_y = [16, 16 + box_h + 48, 16 + 2 * (box_h + 48)] if parent else [None, 16, 16 + box_h + 48]
    height = (rows_y[2] or 0) + (box_h + 16 if children else 0) if children else (rows_y[1] or 0) + box_h + 16
    parts = [f'<svg class="chart federation" viewBox="0 0 {width} {height}" width="100%" role="img" aria-hidden="true" '
             f'xmlns="http://www.w3.org/2000/svg"><title>联邦拓扑</title>']
    cx = width / 2

    def box(x: float, y: float, node: dict[str, Any]) -> None:
        fill, stroke = STATE_COLOURS[node["state"]]
        thick = 3 if node["state"] == "down" else 1.5
        parts.append(f'<g class="peer state-{node["state"]}" data-node="{escape(node["id"])}">')
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{box_w}" height="{box_h}" rx="8" fill="{fill}" stroke="{stroke}" '
                     f'stroke-width="{thick}"/>')
        lines = [(f'{node["name"]}（{node["id"]}）', 13, "bold"), (node["state_label"], 12, "bold")] + \
                [(line, 11, "normal") for line in node["lines"]]
        for i, (text, size, weight) in enumerate(lines[:5]):
            colour = stroke if i == 1 else "#222"
            parts.append(f'<text x="{x + 10:.1f}" y="{y + 18 + i * 17}" font-size="{size}" font-weight="{weight}" '
                         f'fill="{colour}">{escape(text)}</text>')
        parts.append("</g>")

    if parent:
        py = rows_y[0]
        parts.append(f'<line x1="{cx}" y1="{py + box_h}" x2="{cx}" y2="{rows_y[1]}" stroke="#8a94a3" stroke-width="2"/>')
        box(cx - box_w / 2, py, parent)
    my = rows_y[1]
    box(cx - box_w / 2, my, center)
    if children:
        cy = rows_y[2]
        span = n * (box_w + 20) - 20
        x0 = cx - span / 2
        for i, child in enumerate(children):
            x = x0 + i * (box_w + 20)
            dash = ' stroke-dasharray="6 4"' if child["state"] == "down" else ""
            parts.append(f'<line x1="{cx}" y1="{my + box_h}" x2="{x + box_w / 2:.1f}" y2="{cy}" stroke="#8a94a3" '
                         f'stroke-width="2"{dash}/>')
            box(x, cy, child)
    parts.append("</svg>")
    return Markup("".join(parts))
