"""The card's SVG plot of a metric over saves, and the value helpers it shares with the table.

Standard library only (imported on every ``import metaflow`` through the card package).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

# Plot geometry (SVG user units).
_WIDTH, _HEIGHT = 640, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 20, 20, 52


def svg_plot(oldest_first: list, metric: str, x: Optional[str]) -> str:
    """SVG line plot of ``metric`` in save order; checkpoints without it are left out."""
    points = []  # (x value, y value, save order, ref)
    for i, ref in enumerate(oldest_first, start=1):
        md = metadata_of(ref)
        y_val = number(md.get(metric))
        x_val = float(i) if x is None else number(md.get(x))
        if y_val is not None and x_val is not None:
            points.append((x_val, y_val, i, ref))
    x_label = "save # (oldest = 1)" if x is None else x
    if not points:
        need = metric if x is None else "%s and %s" % (metric, x)
        return '<p class="note">No checkpoint has numeric metadata %s to plot.</p>' % esc(need)

    x_lo, x_hi, x_ticks = nice_ticks(
        [p[0] for p in points], integer=x is None or all(float(p[0]).is_integer() for p in points)
    )
    y_lo, y_hi, y_ticks = nice_ticks([p[1] for p in points])
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM

    def sx(v: float) -> float:
        return _LEFT + (v - x_lo) / (x_hi - x_lo) * plot_w

    def sy(v: float) -> float:
        return _TOP + (y_hi - v) / (y_hi - y_lo) * plot_h

    bottom, right = _TOP + plot_h, _LEFT + plot_w
    svg = [
        '<svg class="plot" role="img" width="%d" height="%d" viewBox="0 0 %d %d" '
        'data-metric="%s" data-x="%s">'
        % (_WIDTH, _HEIGHT, _WIDTH, _HEIGHT, esc(metric), esc(x_label)),
        "<title>%s</title>" % esc("%s over %s" % (metric, x_label)),
    ]
    for t in y_ticks:
        y = sy(t)
        svg.append(
            '<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>' % (_LEFT, y, right, y)
        )
        svg.append(
            '<text class="tick-label y-tick" x="%.1f" y="%.1f" text-anchor="end" '
            'dominant-baseline="middle">%s</text>' % (_LEFT - 6, y, esc(fmt(t)))
        )
    for t in x_ticks:
        xx = sx(t)
        svg.append(
            '<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>'
            % (xx, bottom, xx, bottom + 4)
        )
        svg.append(
            '<text class="tick-label x-tick" x="%.1f" y="%.1f" text-anchor="middle">%s</text>'
            % (xx, bottom + 16, esc(fmt(t)))
        )
    svg.append(
        '<line class="axis x-axis" x1="%d" y1="%d" x2="%d" y2="%d"/>'
        % (_LEFT, bottom, right, bottom)
    )
    svg.append(
        '<line class="axis y-axis" x1="%d" y1="%d" x2="%d" y2="%d"/>' % (_LEFT, _TOP, _LEFT, bottom)
    )
    svg.append(
        '<text class="axis-label x-label" x="%.1f" y="%d" text-anchor="middle">%s</text>'
        % (_LEFT + plot_w / 2, _HEIGHT - 10, esc(x_label))
    )
    svg.append(
        '<text class="axis-label y-label" x="0" y="0" text-anchor="middle" '
        'transform="translate(16 %.1f) rotate(-90)">%s</text>' % (_TOP + plot_h / 2, esc(metric))
    )
    coords = ["%.2f,%.2f" % (sx(px), sy(py)) for px, py, _, _ in points]
    svg.append('<polyline class="series" points="%s"/>' % " ".join(coords))
    for (px, py, i, ref), xy in zip(points, coords):
        cx, cy = xy.split(",")
        label = "#%d %s: %s=%s" % (i, ref.get("name", ""), metric, fmt(py))
        if x is not None:
            label += ", %s=%s" % (x, fmt(px))
        svg.append(
            '<circle class="point" cx="%s" cy="%s" r="3.5" data-order="%d" data-name="%s" '
            'data-x="%r" data-y="%r"><title>%s</title></circle>'
            % (cx, cy, i, esc(ref.get("name", "")), px, py, esc(label))
        )
    svg.append("</svg>")
    caption = "%s over %s: %d of %d checkpoints have %s." % (
        metric,
        x_label,
        len(points),
        len(oldest_first),
        "a numeric %s" % metric if x is None else "numeric %s and %s" % (metric, x),
    )
    return '<figure class="metric-plot">%s<figcaption class="caption">%s</figcaption></figure>' % (
        "".join(svg),
        esc(caption),
    )


def nice_ticks(
    values: Sequence[float], count: int = 5, integer: bool = False
) -> tuple[float, float, list[float]]:
    """Axis range and tick positions covering ``values`` at round steps (1, 2, 2.5, 5 × 10^k).

    Parameters
    ----------
    values : sequence of float
        Data values (at least one).
    count : int
        About how many ticks.
    integer : bool
        Ticks only at integers (save numbers).

    Returns
    -------
    (float, float, list of float)
        Low and high end of the axis and the ticks between them, inclusive.
    """
    lo, hi = min(values), max(values)
    if lo == hi:  # one value: centre it in a visible range
        pad = 1.0 if integer or lo == 0 else abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in steps if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    start = math.floor(lo / step) * step
    end = math.ceil(hi / step) * step
    n = int(round((end - start) / step))
    return start, end, [start + k * step for k in range(n + 1)]


def number(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None (bools, strings, NaN and infinities are not plotted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metadata_of(ref: Mapping[str, Any]) -> Mapping[str, Any]:
    md = ref.get("metadata")
    return md if isinstance(md, Mapping) else {}


def fmt(value: float) -> str:
    return "%d" % value if float(value).is_integer() and abs(value) < 1e15 else "%.4g" % value


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
