"""Small SVG charts written by hand, so the HTML report needs no plotting library and no network: per-item
distributions of a metric (one row of dots per method, the mean marked) and quality against speed."""

from __future__ import annotations

import math
from html import escape

_WIDTH, _ROW, _LEFT, _RIGHT, _TOP = 560, 28, 120, 20, 24
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _ticks(low: float, high: float) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / 4))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= 6:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + k * step for k in range(int((high - first) / step) + 1)]


def _scale(low: float, high: float, start: float, stop: float):
    span = (high - low) or 1.0
    return lambda value: start + (value - low) / span * (stop - start)


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def distribution(metric: str, values: dict[str, list[float]], lower_is_better: bool) -> str:
    """One row per method, a dot per item, a bar at the mean."""
    methods = list(values)
    every = _finite(v for method in methods for v in values[method])
    if not every:
        return ""
    low, high = min(every), max(every)
    pad = (high - low) * 0.05 or 1.0
    low, high = low - pad, high + pad
    height = _TOP + _ROW * len(methods) + 30
    x = _scale(low, high, _LEFT, _WIDTH - _RIGHT)
    parts = [f'<svg width="{_WIDTH}" height="{height}" role="img" '
             f'aria-label="{escape(metric)} per item">',
             f'<text x="{_LEFT}" y="14" font-size="12">{escape(metric)} per item '
             f'({"lower" if lower_is_better else "higher"} is better)</text>']
    for row, method in enumerate(methods):
        y = _TOP + _ROW * row + _ROW / 2
        color = _COLORS[row % len(_COLORS)]
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4}" font-size="12" text-anchor="end">{escape(method)}</text>')
        points = _finite(values[method])
        for value in points:
            parts.append(f'<circle cx="{x(value):.1f}" cy="{y:.1f}" r="3.5" fill="{color}" fill-opacity="0.6"/>')
        if points:
            mean = sum(points) / len(points)
            parts.append(f'<line x1="{x(mean):.1f}" x2="{x(mean):.1f}" y1="{y - 9:.1f}" y2="{y + 9:.1f}" '
                         f'stroke="black" stroke-width="2"/>')
    axis = _TOP + _ROW * len(methods) + 4
    parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{axis}" y2="{axis}" stroke="#888"/>')
    for tick in _ticks(low, high):
        parts.append(f'<text x="{x(tick):.1f}" y="{axis + 16}" font-size="11" text-anchor="middle">{tick:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def quality_vs_speed(metric: str, points: dict[str, tuple[float, float]], lower_is_better: bool) -> str:
    """A dot per method: seconds per item (log scale) across, the metric's mean up."""
    usable = {m: (s, v) for m, (s, v) in points.items() if s and s > 0 and v is not None and math.isfinite(v)}
    if not usable:
        return ""
    height, bottom = 300, 250
    seconds = [math.log10(s) for s, _ in usable.values()]
    values = [v for _, v in usable.values()]
    s_low, s_high = min(seconds) - 0.3, max(seconds) + 0.3
    pad = (max(values) - min(values)) * 0.1 or 1.0
    v_low, v_high = min(values) - pad, max(values) + pad
    x = _scale(s_low, s_high, 60, _WIDTH - 140)
    y = _scale(v_low, v_high, bottom, 30)
    parts = [f'<svg width="{_WIDTH}" height="{height}" role="img" '
             f'aria-label="{escape(metric)} against seconds per item">',
             f'<text x="60" y="16" font-size="12">{escape(metric)} ({"lower" if lower_is_better else "higher"} '
             'is better) against seconds per item (log scale)</text>',
             f'<line x1="60" x2="{_WIDTH - 140}" y1="{bottom}" y2="{bottom}" stroke="#888"/>',
             f'<line x1="60" x2="60" y1="30" y2="{bottom}" stroke="#888"/>']
    for exponent in range(math.ceil(s_low), math.floor(s_high) + 1):
        parts.append(f'<text x="{x(exponent):.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
                     f'{10.0 ** exponent:g} s</text>')
    for tick in _ticks(v_low, v_high):
        parts.append(f'<text x="54" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick:g}</text>')
    for index, (method, (secs, value)) in enumerate(usable.items()):
        cx, cy = x(math.log10(secs)), y(value)
        color = _COLORS[index % len(_COLORS)]
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"/>')
        parts.append(f'<text x="{cx + 8:.1f}" y="{cy + 4:.1f}" font-size="12">{escape(method)}</text>')
    parts.append("</svg>")
    return "".join(parts)
