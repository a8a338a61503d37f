"""Small SVG charts written by hand for the self-contained HTML report.

Three kinds: a scatter/line chart with axes, a diverging heatmap and a layered
graph. Each returns an `<svg>` element as a string, inline-ready: no
JavaScript, no fonts or stylesheets to fetch, tooltips as `<title>` elements.
Every piece of text goes through `html.escape`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

FONT = 'font-family="system-ui, sans-serif"'
GRID_COLOUR = "#e5e5e5"
HALO = 'paint-order="stroke" stroke="white" stroke-width="3" stroke-linejoin="round"'  # text stays legible over lines
NEGATIVE, NEUTRAL, POSITIVE = (33, 102, 172), (247, 247, 247), (178, 24, 43)  # diverging blue-white-red
SEQUENTIAL = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))  # viridis stops


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    tip: str = ""
    """Tooltip text."""
    label: str = ""
    """Text drawn beside the point."""


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    colour: str = "#1f77b4"
    shape: str = "circle"
    """circle, square or none (a line only)."""
    line: bool = False
    """Join the points in order (a step line when `step`)."""
    step: bool = False
    size: float = 4.0


@dataclass(frozen=True)
class Frame:
    """Maps data coordinates into a plot area of a `width` x `height` SVG."""

    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    margin: tuple[float, float, float, float] = (44, 20, 45, 60)  # top, right, bottom, left

    def x(self, value: float) -> float:
        low, high = self.x_range
        top, right, bottom, left = self.margin
        return left + (value - low) / ((high - low) or 1.0) * (self.width - left - right)

    def y(self, value: float) -> float:
        low, high = self.y_range
        top, right, bottom, left = self.margin
        return self.height - bottom - (value - low) / ((high - low) or 1.0) * (self.height - top - bottom)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 5, 10) if f * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _padded_range(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    low, high = min(values), max(values)
    span = (high - low) or (abs(high) or 1.0)
    return low - pad * span, high + pad * span


def _tick_text(value: float) -> str:
    return f"{value:.4g}"


def chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, width: int = 560,
          height: int = 340, vlines: Sequence[tuple[float, str]] = (), integer_x: bool = False) -> str:
    """A scatter (and line) chart with axes, grid, legend and tooltips."""
    xs = [p.x for s in series for p in s.points] + [v for v, _ in vlines]
    ys = [p.y for s in series for p in s.points]
    if not xs or not ys:
        return _empty(title, width)
    frame = Frame(width, height, _padded_range(xs), _padded_range(ys))
    parts = [_svg_open(width, height, title), _axes(frame, x_label, y_label, integer_x)]
    for value, text in vlines:
        x = frame.x(value)
        parts.append(f'<line x1="{x:.1f}" y1="{frame.margin[0]}" x2="{x:.1f}" y2="{height - frame.margin[2]}" '
                     f'stroke="#999" stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{frame.margin[0] + 10}" '
                     f'font-size="10" fill="#666" {FONT}>{escape(text)}</text>')
    for one in series:
        parts.append(_series(frame, one))
    parts.append(_legend(series, width))
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(width: float, height: float, title: str) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13" font-weight="600" {FONT}>'
            f'{escape(title)}</text>')


def _empty(title: str, width: int) -> str:
    return (f'<svg viewBox="0 0 {width} 60" width="{width}" height="60"><text x="10" y="35" font-size="12" {FONT}>'
            f'{escape(title)}: nothing to plot yet</text></svg>')


def _axes(frame: Frame, x_label: str, y_label: str, integer_x: bool) -> str:
    top, right, bottom, left = frame.margin
    parts = []
    x_ticks = nice_ticks(*frame.x_range)
    if integer_x:
        x_ticks = sorted({round(t) for t in x_ticks if abs(t - round(t)) < 1e-9} or {round(frame.x_range[0])})
        x_ticks = [t for t in x_ticks if frame.x_range[0] <= t <= frame.x_range[1]]
    for tick in x_ticks:
        x = frame.x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{frame.height - bottom}" stroke="{GRID_COLOUR}"/>'
                     f'<text x="{x:.1f}" y="{frame.height - bottom + 14}" text-anchor="middle" font-size="10" {FONT}>'
                     f'{_tick_text(tick)}</text>')
    for tick in nice_ticks(*frame.y_range):
        y = frame.y(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{frame.width - right}" y2="{y:.1f}" stroke="{GRID_COLOUR}"/>'
                     f'<text x="{left - 5}" y="{y + 3:.1f}" text-anchor="end" font-size="10" {FONT}>'
                     f'{_tick_text(tick)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{frame.width - left - right}" '
                 f'height="{frame.height - top - bottom}" fill="none" stroke="#888"/>')
    parts.append(f'<text x="{(left + frame.width - right) / 2:.1f}" y="{frame.height - 8}" text-anchor="middle" '
                 f'font-size="11" {FONT}>{escape(x_label)}</text>')
    middle = (top + frame.height - bottom) / 2
    parts.append(f'<text x="14" y="{middle:.1f}" text-anchor="middle" font-size="11" {FONT} '
                 f'transform="rotate(-90 14 {middle:.1f})">{escape(y_label)}</text>')
    return "".join(parts)


def _series(frame: Frame, series: Series) -> str:
    parts = []
    if series.line and len(series.points) > 1:
        coords = []
        for index, point in enumerate(series.points):
            if series.step and index:
                coords.append(f"{frame.x(point.x):.1f},{frame.y(series.points[index - 1].y):.1f}")
            coords.append(f"{frame.x(point.x):.1f},{frame.y(point.y):.1f}")
        parts.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{series.colour}" stroke-width="1.5"/>')
    for point in series.points:
        x, y = frame.x(point.x), frame.y(point.y)
        tip = f"<title>{escape(point.tip)}</title>" if point.tip else ""
        if series.shape == "square":
            size = series.size * 1.7
            parts.append(f'<rect x="{x - size / 2:.1f}" y="{y - size / 2:.1f}" width="{size:.1f}" height="{size:.1f}" '
                         f'fill="{series.colour}" fill-opacity="0.85" stroke="#333" stroke-width="0.5">{tip}</rect>')
        elif series.shape == "circle":
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{series.size}" fill="{series.colour}" '
                         f'fill-opacity="0.75" stroke="#333" stroke-width="0.5">{tip}</circle>')
        if point.label:
            parts.append(f'<text x="{x + 6:.1f}" y="{y - 5:.1f}" font-size="9" {HALO} {FONT}>'
                         f'{escape(point.label)}</text>')
    return "".join(parts)


def _legend(series: Sequence[Series], width: float) -> str:
    parts, x = [], 70.0
    for one in series:
        marker = (f'<rect x="{x:.1f}" y="24" width="8" height="8" fill="{one.colour}"/>' if one.shape == "square" else
                  f'<circle cx="{x + 4:.1f}" cy="28" r="4" fill="{one.colour}"/>' if one.shape == "circle" else
                  f'<line x1="{x:.1f}" y1="28" x2="{x + 10:.1f}" y2="28" stroke="{one.colour}" stroke-width="2"/>')
        parts.append(marker + f'<text x="{x + 13:.1f}" y="32" font-size="10" {FONT}>{escape(one.name)}</text>')
        x += 20 + 6 * len(one.name)
    return "".join(parts) if x < width + 200 else ""


def mix(first: tuple[int, int, int], second: tuple[int, int, int], share: float) -> str:
    share = min(max(share, 0.0), 1.0)
    r, g, b = (round(a + (b - a) * share) for a, b in zip(first, second))
    return f"#{r:02x}{g:02x}{b:02x}"


def diverging(value: float, scale: float) -> str:
    """Blue below zero, white at zero, red above; |value| = scale is the full colour."""
    share = 0.0 if scale <= 0 else min(abs(value) / scale, 1.0)
    return mix(NEUTRAL, POSITIVE if value > 0 else NEGATIVE, share)


def sequential(share: float) -> str:
    """Viridis-like colour for a share in [0, 1]."""
    share = min(max(share, 0.0), 1.0) * (len(SEQUENTIAL) - 1)
    index = min(int(share), len(SEQUENTIAL) - 2)
    return mix(SEQUENTIAL[index], SEQUENTIAL[index + 1], share - index)


def heatmap(values: Sequence[Sequence[float]], *, title: str, row_ticks: Sequence[float],
            column_ticks: Sequence[float], row_label: str, column_label: str, cell: int = 13) -> str:
    """A diverging heatmap, row 0 drawn at the bottom (rows and columns are increasing grid values)."""
    rows, columns = len(values), len(values[0]) if values else 0
    scale = max((abs(v) for row in values for v in row), default=0.0)
    left, top = 42, 24
    width, height = max(left + columns * cell + 8, 12 + 6 * len(title)), top + rows * cell + 34
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
             f'<text x="4" y="14" font-size="11" font-weight="600" {FONT}>{escape(title)}</text>']
    for i, row in enumerate(values):
        y = top + (rows - 1 - i) * cell
        for j, value in enumerate(row):
            tip = f"{row_label} = {row_ticks[i]:g}, {column_label} = {column_ticks[j]:g}: {value:.3g}"
            parts.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="{diverging(value, scale)}"><title>{escape(tip)}</title></rect>')
        if i % 2 == 0:
            parts.append(f'<text x="{left - 3}" y="{y + cell - 3}" text-anchor="end" font-size="8" {FONT}>'
                         f'{row_ticks[i]:g}</text>')
    for j in range(0, columns, 2):
        parts.append(f'<text x="{left + j * cell + cell / 2:.1f}" y="{top + rows * cell + 10}" text-anchor="middle" '
                     f'font-size="8" {FONT}>{column_ticks[j]:g}</text>')
    parts.append(f'<text x="{left + columns * cell / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="10" '
                 f'{FONT}>{escape(column_label)}</text>')
    middle = top + rows * cell / 2
    parts.append(f'<text x="10" y="{middle:.1f}" text-anchor="middle" font-size="10" {FONT} '
                 f'transform="rotate(-90 10 {middle:.1f})">{escape(row_label)}</text></svg>')
    return "".join(parts)


@dataclass(frozen=True)
class Node:
    id: int
    layer: int
    """Column (the generation)."""
    label: str
    tip: str
    value: float | None
    """Fitness; colours the node (None: grey)."""
    square: bool = False
    """Seeds are squares."""


@dataclass(frozen=True)
class Edge:
    parent: int
    child: int
    tip: str = ""
    highlight: bool = False


@dataclass
class _Layout:
    positions: dict[int, tuple[float, float]] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0


def _layout(nodes: Sequence[Node], column_width: float, row_height: float) -> _Layout:
    """Layers left to right; within a layer, nodes in the order given (best first)."""
    layout = _Layout()
    counts: dict[int, int] = {}
    for node in nodes:
        row = counts.get(node.layer, 0)
        counts[node.layer] = row + 1
        layout.positions[node.id] = (20 + node.layer * column_width, 44 + row * row_height)
    layers = max(counts, default=0) + 1
    layout.width = 40 + layers * column_width
    layout.height = 60 + max(counts.values(), default=1) * row_height
    return layout


def graph(nodes: Sequence[Node], edges: Sequence[Edge], *, title: str, column_width: int = 210,
          row_height: int = 18) -> str:
    """A layered graph: one column per generation, edges as curves from parent to child.

    Node colour is the rank of its value (a few outliers would wash out a linear scale)."""
    if not nodes:
        return _empty(title, 400)
    layout = _layout(nodes, column_width, row_height)
    label_width = 12 + 5.2 * max(len(node.label) for node in nodes)
    ordered = sorted({node.value for node in nodes if node.value is not None})
    shares = {value: index / max(len(ordered) - 1, 1) for index, value in enumerate(ordered)}  # colour by rank
    parts = [_svg_open(layout.width, layout.height, title)]
    for edge in edges:
        if edge.parent not in layout.positions or edge.child not in layout.positions:
            continue
        (x1, y1), (x2, y2) = layout.positions[edge.parent], layout.positions[edge.child]
        x1 += min(column_width - 40, label_width)  # leave the parent's label clear
        middle = (x1 + x2) / 2
        colour, width = ("#d62728", 1.6) if edge.highlight else ("#9aa", 0.8)
        parts.append(f'<path d="M{x1:.1f},{y1:.1f} C{middle:.1f},{y1:.1f} {middle:.1f},{y2:.1f} {x2 - 6:.1f},{y2:.1f}" '
                     f'fill="none" stroke="{colour}" stroke-width="{width}" stroke-opacity="0.8">'
                     f'<title>{escape(edge.tip)}</title></path>')
    for node in nodes:
        x, y = layout.positions[node.id]
        colour = "#bbb" if node.value is None else sequential(shares[node.value])
        tip = f"<title>{escape(node.tip)}</title>"
        shape = (f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{colour}" stroke="#333" '
                 f'stroke-width="0.6">{tip}</rect>' if node.square else
                 f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" stroke="#333" '
                 f'stroke-width="0.6">{tip}</circle>')
        parts.append(shape + f'<text x="{x + 8:.1f}" y="{y + 3:.1f}" font-size="9" {HALO} {FONT}>'
                     f'{escape(node.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
