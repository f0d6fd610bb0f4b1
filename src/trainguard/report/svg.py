"""Plots as inline SVG, drawn in Python: deterministic, no script, nothing fetched.

Every label that came from the ledger goes through :func:`esc`. Numbers are
formatted by us, never copied from a payload, so an attacker-chosen "number" cannot
inject markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from trainguard.report.downsample import MAX_POINTS, downsample
from trainguard.report.model import Series

PALETTE: Final = (
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
    "#7f7f7f", "#bcbd22", "#e377c2", "#393b79", "#637939",
)  # fmt: skip
"""Rank colours; none of them is a severity colour, so the marks stand out."""

SEVERITY_COLOURS: Final = {
    "critical": "#b00020",
    "high": "#e8590c",
    "medium": "#f2a900",
    "low": "#4c8fd6",
}

MAX_SERIES: Final = 16
"""Lines per plot; with more ranks the ones with findings and the extremes are drawn."""

SPARSE: Final = 120
"""Series with at most this many points also get a dot per point (a norm measured
every few steps is a handful of points, and a line alone hides where they are)."""

LOG_SPAN: Final = 100.0
"""Ratio of largest to smallest positive value above which a log axis is used."""

WIDTH: Final = 920
HEIGHT: Final = 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 34


def esc(text: object) -> str:
    """Escape untrusted text for HTML and SVG (quotes too: it may land in attributes)."""
    return escape(str(text), quote=True)


def num(value: float) -> str:
    """A short, locale-free number label."""
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e5 or mag < 1e-3:
        return f"{value:.2e}"
    if mag >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def tick_label(value: float, ticks_: Sequence[float]) -> str:
    """``value`` with as many decimals as the tick spacing needs (0.1005, not 0.101).

    :func:`ticks` spaces ticks by 1, 2 or 5 times a power of ten, so the spacing's
    leading digit fixes the decimals."""
    if len(ticks_) < 2:
        return num(value)
    step = abs(ticks_[1] - ticks_[0])
    if step <= 0 or step >= 1 or not math.isfinite(step) or step < 1e-6:
        return num(value)
    decimals = min(6, max(0, -math.floor(math.log10(step))))
    return f"{value:.{decimals}f}"


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    out: list[float] = []
    value = first
    while value <= hi + step * 1e-9 and len(out) < 20:
        out.append(round(value, 12))
        value += step
    return out


@dataclass(frozen=True, slots=True)
class Mark:
    """A vertical line at an anomalous step (a finding), coloured by severity."""

    x: float
    severity: str
    text: str


class _Frame:
    """Maps data coordinates onto the plot area."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, log_y: bool) -> None:
        if x1 <= x0:
            x0, x1 = x0 - 1, x1 + 1
        if y1 <= y0:
            pad = abs(y0) * 0.1 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        self.x0, self.x1, self.y0, self.y1, self.log_y = x0, x1, y0, y1, log_y

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return TOP + (self.y1 - value) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)


def _axes(frame: _Frame, x_label: str, y_label: str, y_fmt: str = "") -> list[str]:
    out = [
        f'<rect class="area" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}"/>'
    ]
    y_ticks = ticks(frame.y0, frame.y1)
    for t in y_ticks:
        y = frame.y(t)
        label = num(10**t) if frame.log_y else tick_label(t, y_ticks)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{label}{y_fmt}</text>'
        )
    x_ticks = ticks(frame.x0, frame.x1, 8)
    for t in x_ticks:
        x = frame.x(t)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" '
            f'text-anchor="middle">{tick_label(t, x_ticks)}</text>'
        )
    out.append(
        f'<text class="axis" x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 4}" '
        f'text-anchor="middle">{esc(x_label)}</text>'
    )
    out.append(f'<text class="axis" x="{LEFT}" y="{TOP - 8}">{esc(y_label)}</text>')
    return out


def pick_series(series: Sequence[Series], priority: Sequence[str]) -> list[Series]:
    """At most :data:`MAX_SERIES` series: the ``priority`` labels first (ranks named by
    findings), then those with the largest peaks, so a straggler is always drawn."""
    if len(series) <= MAX_SERIES:
        return list(series)
    first = [s for s in series if s.label in priority]
    rest = sorted(
        (s for s in series if s.label not in priority),
        key=lambda s: -max((y for _, y in s.finite()), default=-math.inf),
    )
    chosen = {id(s) for s in (first + rest)[:MAX_SERIES]}
    return [s for s in series if id(s) in chosen]


def line_chart(
    series: Sequence[Series],
    *,
    name: str,
    x_label: str,
    y_label: str,
    marks: Sequence[Mark] = (),
    log_y: bool = False,
    max_points: int = MAX_POINTS,
) -> str:
    """An SVG line chart, one polyline per series, with findings as vertical marks.

    Non-finite values are drawn as red crosses on the top edge (they are the anomaly).
    ``log_y`` asks for a log axis, used when the values span more than
    :data:`LOG_SPAN`; non-positive values cannot be drawn on it and are counted in
    the caption.
    """
    keep = {m.x for m in marks}
    reduced = [(s, downsample(s.points, max_points, keep)) for s in series]
    xs = [x for _, pts in reduced for x, _ in pts if math.isfinite(x)] + [
        m.x for m in marks if math.isfinite(m.x)
    ]

    positive = [y for _, pts in reduced for _, y in pts if math.isfinite(y) and y > 0]
    # A log axis only helps when the values span decades (an exploding gradient).
    log_y = log_y and bool(positive) and max(positive) > LOG_SPAN * min(positive)

    def ty(y: float) -> float | None:
        if not math.isfinite(y):
            return None
        if log_y:
            return math.log10(y) if y > 0 else None
        return y

    ys = [v for _, pts in reduced for _, y in pts if (v := ty(y)) is not None]
    if not xs:
        return ""
    frame = _Frame(min(xs), max(xs), min(ys, default=0.0), max(ys, default=1.0), log_y)
    parts = [
        f'<svg class="plot" data-plot="{esc(name)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg">',
        *_axes(frame, x_label, y_label),
    ]
    for m in marks:
        x = frame.x(m.x)
        colour = SEVERITY_COLOURS.get(m.severity, "#000")
        parts.append(
            f'<line class="mark" data-severity="{esc(m.severity)}" x1="{x:.1f}" x2="{x:.1f}" '
            f'y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="{colour}">'
            f"<title>{esc(m.text)}</title></line>"
        )
    skipped = 0
    for i, (s, pts) in enumerate(reduced):
        colour = PALETTE[i % len(PALETTE)]
        coords = []
        crosses = []
        for x, y in pts:
            v = ty(y)
            if v is None:
                if math.isfinite(y):
                    skipped += 1
                else:
                    crosses.append(frame.x(x))
                continue
            coords.append(f"{frame.x(x):.1f},{frame.y(v):.1f}")
        parts.append(
            f'<polyline class="series" data-label="{esc(s.label)}" data-points="{len(coords)}" '
            f'stroke="{colour}" points="{" ".join(coords)}">'
            f"<title>{esc(s.label)}</title></polyline>"
        )
        if len(coords) <= SPARSE:
            parts.extend(
                f'<circle class="pt" cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.2" '
                f'fill="{colour}"/>'
                for c in coords
            )
        parts.extend(
            f'<path class="nonfinite" d="M{cx - 4:.1f},{TOP - 4} l8,8 m0,-8 l-8,8">'
            f"<title>{esc(s.label)}: non-finite value</title></path>"
            for cx in crosses
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>'
        f"{esc(s.label)}</span>"
        for i, (s, _) in enumerate(reduced)
    )
    note = (
        f'<span class="note">{skipped} non-positive value(s) not drawn on the log scale</span>'
        if skipped
        else ""
    )
    return "".join(parts) + f'<div class="legend">{legend}{note}</div>'


def dot_strip(
    points: Sequence[tuple[float, int, str, str]],
    *,
    name: str,
    x_label: str,
    lanes: Sequence[str],
) -> str:
    """Dots in horizontal lanes: ``(x, lane index, colour, tooltip)``.

    Used for the findings timeline (lanes = severities) and replica agreement.
    """
    if not points:
        return ""
    xs = [p[0] for p in points if math.isfinite(p[0])]
    if not xs:
        return ""
    height = TOP + BOTTOM + 26 * len(lanes)
    frame = _Frame(min(xs), max(xs), 0, 1, False)
    parts = [
        f'<svg class="plot" data-plot="{esc(name)}" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<rect class="area" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{26 * len(lanes)}"/>',
    ]
    for i, lane_name in enumerate(lanes):
        y = TOP + 13 + 26 * i
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
            f"{esc(lane_name)}</text>"
        )
    parts.extend(
        f'<text class="tick" x="{frame.x(t):.1f}" y="{height - BOTTOM + 14}" '
        f'text-anchor="middle">{num(t)}</text>'
        for t in ticks(frame.x0, frame.x1, 8)
    )
    parts.append(
        f'<text class="axis" x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{height - 4}" '
        f'text-anchor="middle">{esc(x_label)}</text>'
    )
    for x, lane, colour, tip in points:
        if not math.isfinite(x):
            continue
        parts.append(
            f'<circle class="dot" cx="{frame.x(x):.1f}" cy="{TOP + 13 + 26 * lane}" r="5" '
            f'fill="{colour}"><title>{esc(tip)}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)
