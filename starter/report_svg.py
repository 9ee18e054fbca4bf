"""Inline SVG bar charts for the recovery report, drawn in Python: no script, no font or
stylesheet to fetch, every string through html.escape. Each chart is one
``<svg class="chart" id=...>``; each drawn value is a ``<rect class="bar">`` with a
``<title>`` (the browser's tooltip), so a chart with data always has bars to find."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

W, H = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 14, 46
GREEN, RED, GREY, BLUE = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0"
ORANGE, TEAL = "#ef6c00", "#00897b"


@dataclass(frozen=True)
class Bar:
    """One value: `value` None draws no bar (shown as `text`, e.g. "no campaigns")."""

    label: str
    value: float | None
    text: str
    color: str = BLUE
    short: str = ""  # the text where `text` does not fit above its bar


@dataclass(frozen=True)
class Segment:
    name: str
    value: float
    text: str
    color: str


def _svg(chart_id: str, title: str, body: list[str], height: int = H) -> str:
    head = (
        f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'width="{W}" height="{height}" viewBox="0 0 {W} {height}">'
    )
    return "\n".join([head, f"<title>{escape(title)}</title>", *body, "</svg>"])


def _text(x: float, y: float, s: str, anchor: str = "middle", cls: str = "lbl", extra: str = "") -> str:
    return f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _rect(x: float, y: float, w: float, h: float, color: str, tip: str) -> str:
    return (
        f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.0):.1f}" height="{max(h, 0.0):.1f}" '
        f'fill="{escape(color)}"><title>{escape(tip)}</title></rect>'
    )


def nice_top(largest: float, cap: float | None = None) -> float:
    """An axis top >= `largest` whose quarter is 1, 2 or 5 times a power of ten."""
    if largest <= 0:
        return cap or 1.0
    step = largest / 4
    power = 10 ** math.floor(math.log10(step))
    top = 4.0 * next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= step * (1 - 1e-9))
    return min(top, cap) if cap else top


def _empty(values: Sequence[float | None]) -> bool:
    return not any(v for v in values)


def columns(chart_id: str, title: str, bars: Sequence[Bar], top: float, tick: Callable[[float], str]) -> str:
    """Vertical bars on a 0..`top` axis with five gridlines labelled by `tick`."""
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    body = []
    for i in range(5):
        v = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        body.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>')
        body.append(_text(LEFT - 6, y + 4, tick(v), "end", "tick"))
    body.append(f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{W - RIGHT}" y2="{TOP + plot_h}"/>')
    slot = plot_w / max(len(bars), 1)
    for i, b in enumerate(bars):
        x = LEFT + i * slot
        rotate = len(bars) > 8
        lx, ly = x + slot / 2, TOP + plot_h + 16
        turn = f' transform="rotate(-30 {lx:.1f} {ly:.1f})"' if rotate else ""
        body.append(_text(lx, ly, b.label, "end" if rotate else "middle", "lbl", turn))
        if not b.value or top <= 0:  # None or 0: no bar, only its text on the axis
            body.append(_text(x + slot / 2, TOP + plot_h - 6, b.text, cls="note" if b.value is None else "val"))
            continue
        h = plot_h * min(b.value, top) / top
        body.append(_rect(x + slot * 0.15, TOP + plot_h - h, slot * 0.7, h, b.color, f"{b.label}: {b.text}"))
        fits = len(b.text) * 6.3 < slot or not b.short
        body.append(_text(x + slot / 2, TOP + plot_h - h - 4, b.text if fits else b.short, cls="val"))
    if _empty([b.value for b in bars]):
        body.append(_text(W / 2, TOP + plot_h / 2, "no data in this period", cls="note"))
    return _svg(chart_id, title, body)


def rows(chart_id: str, title: str, bars: Sequence[Bar], top: float, tick: Callable[[float], str]) -> str:
    """Horizontal bars, one row per value, on a 0..`top` axis."""
    label_w, row_h = 130, 26
    height = TOP + max(len(bars), 1) * row_h + 30
    plot_w = W - label_w - RIGHT - 60
    body = []
    for i in range(5):
        x = label_w + plot_w * i / 4
        body.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{height - 24}"/>')
        body.append(_text(x, height - 8, tick(top * i / 4), cls="tick"))
    for i, b in enumerate(bars):
        y = TOP + i * row_h
        body.append(_text(label_w - 6, y + row_h / 2 + 4, b.label, "end"))
        if not b.value or top <= 0:
            body.append(_text(label_w + 4, y + row_h / 2 + 4, b.text, "start", "note" if b.value is None else "val"))
            continue
        w = plot_w * min(b.value, top) / top
        body.append(_rect(label_w, y + 4, w, row_h - 8, b.color, f"{b.label}: {b.text}"))
        body.append(_text(label_w + w + 4, y + row_h / 2 + 4, b.text, "start", "val"))
    if not bars:
        body.append(_text(W / 2, TOP + row_h / 2 + 4, "no data in this period", cls="note"))
    return _svg(chart_id, title, body, height)


def stacked(chart_id: str, title: str, lines: Sequence[tuple[str, Sequence[Segment]]]) -> str:
    """One 100% bar per line (e.g. per currency): its segments as shares of their sum,
    never added across lines; a legend names the segments."""
    label_w, row_h = 70, 34
    height = TOP + max(len(lines), 1) * row_h + 40
    plot_w = W - label_w - RIGHT
    body = []
    for i, (label, segs) in enumerate(lines):
        y = TOP + i * row_h
        body.append(_text(label_w - 6, y + row_h / 2 + 4, label, "end"))
        whole, x = sum(s.value for s in segs), float(label_w)
        for s in segs:
            if whole <= 0 or s.value <= 0:
                continue
            w = plot_w * s.value / whole
            body.append(_rect(x, y + 5, w, row_h - 10, s.color, f"{label} {s.name}: {s.text}"))
            if w > 60:
                body.append(_text(x + w / 2, y + row_h / 2 + 4, f"{s.value / whole:.0%}", cls="inbar"))
            x += w
    if not lines:
        body.append(_text(W / 2, TOP + row_h / 2 + 4, "no amounts in this period", cls="note"))
    names = {s.name: s.color for _, segs in lines for s in segs}
    x = float(label_w)
    for name, color in names.items():
        y = height - 20
        body.append(f'<rect class="key" x="{x:.1f}" y="{y:.1f}" width="12" height="12" fill="{escape(color)}"/>')
        body.append(_text(x + 16, y + 10, name, "start"))
        x += 30 + 8 * len(name)
    return _svg(chart_id, title, body, height)
