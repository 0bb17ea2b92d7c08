"""The card's SVG plot of one metric over a task's saves: attempts marked, the best point
marked, a log axis when the values span decades.

Standard library only (imported on every ``import metaflow`` through the card package).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any, Optional

from .series import Save, best_save, finite

# Plot geometry (SVG user units).
_WIDTH, _HEIGHT = 640, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 20, 24, 52
#: One colour per plotted metric, in order (the first is the card's accent colour).
PALETTE = ("#0969da", "#bc4c00", "#1a7f37", "#8250df", "#bf3989", "#0a7c86")
#: Colour of the attempt markers and of the best point's ring.
ATTEMPT_COLOUR = "#6e7781"
BEST_COLOUR = "#d4a72c"
#: A positive metric whose largest value is at least this times its smallest gets a log axis.
LOG_RANGE = 100.0


def svg_plot(
    saves: Sequence[Save],
    metric: str,
    x: Optional[str],
    colour: str = PALETTE[0],
    best: Optional[tuple[str, str]] = None,
) -> str:
    """A ``<figure>`` with the SVG line plot of ``metric`` over ``saves`` (oldest first).

    Saves without a finite ``metric`` (or ``x`` field) are left out; the caption counts them.
    Each attempt is its own line, and a dashed vertical marker shows where attempt N started.
    ``best`` is ``(mode, why)``: the lowest (``min``) or highest (``max``) point gets a ring.
    """
    points = []  # (x value, y value, save)
    for save in saves:
        y_val = finite(save.values.get(metric))
        x_val = float(save.order) if x is None else finite(save.values.get(x))
        if y_val is not None and x_val is not None:
            points.append((x_val, y_val, save))
    x_label = "save # (oldest = 1)" if x is None else x
    if not points:
        need = metric if x is None else "%s and %s" % (metric, x)
        return '<p class="note no-values" data-metric="%s">No save has a finite %s to plot.</p>' % (
            esc(metric),
            esc(need),
        )
    ys = [p[1] for p in points]
    log = min(ys) > 0 and max(ys) >= LOG_RANGE * min(ys)
    x_lo, x_hi, x_ticks = nice_ticks(
        [p[0] for p in points], integer=x is None or all(p[0].is_integer() for p in points)
    )
    if log:
        y_lo, y_hi, y_ticks = log_ticks(ys)
    else:
        y_lo, y_hi, y_ticks = nice_ticks(ys)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM

    def sx(v: float) -> float:
        return _LEFT + (v - x_lo) / (x_hi - x_lo) * plot_w

    def sy(v: float) -> float:
        t = math.log10(v) if log else v
        return _TOP + (y_hi - t) / (y_hi - y_lo) * plot_h

    bottom, right = _TOP + plot_h, _LEFT + plot_w
    svg = [
        '<svg class="plot" role="img" width="%d" height="%d" viewBox="0 0 %d %d" '
        'data-metric="%s" data-x="%s" data-scale="%s">'
        % (_WIDTH, _HEIGHT, _WIDTH, _HEIGHT, esc(metric), esc(x_label), "log" if log else "linear"),
        "<title>%s</title>" % esc("%s over %s" % (metric, x_label)),
    ]
    for t in y_ticks:
        y = _TOP + (y_hi - t) / (y_hi - y_lo) * plot_h
        svg.append(
            '<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>' % (_LEFT, y, right, y)
        )
        svg.append(
            '<text class="tick-label y-tick" x="%.1f" y="%.1f" text-anchor="end" '
            'dominant-baseline="middle">%s</text>' % (_LEFT - 6, y, esc(fmt(10**t if log else t)))
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
    svg.extend(_attempt_markers(saves, x, sx, x_lo, x_hi, bottom))
    segments: dict[Any, list[str]] = {}
    for px, py, save in points:
        segments.setdefault(save.attempt, []).append("%.2f,%.2f" % (sx(px), sy(py)))
    for attempt, coords in segments.items():
        svg.append(
            '<polyline class="series" data-attempt="%s" style="stroke:%s" points="%s"/>'
            % (esc("" if attempt is None else attempt), colour, " ".join(coords))
        )
    chosen = best_save(points, best[0]) if best else None
    for px, py, save in points:
        label = "#%d %s: %s=%s" % (save.order, save.name, metric, fmt(py))
        if x is not None:
            label += ", %s=%s" % (x, fmt(px))
        if save.attempt is not None:
            label += ", attempt %s" % save.attempt
        label += "" if save.kept else " (checkpoint pruned)"
        classes = "point" + ("" if save.kept else " pruned") + (" best" if save is chosen else "")
        svg.append(
            '<circle class="%s" cx="%.2f" cy="%.2f" r="3.5" style="fill:%s;stroke:%s" '
            'data-order="%d" data-name="%s" data-attempt="%s" data-kept="%s" data-x="%r" '
            'data-y="%r"><title>%s</title></circle>'
            % (
                classes,
                sx(px),
                sy(py),
                colour if save.kept else "#ffffff",
                "#ffffff" if save.kept else colour,
                save.order,
                esc(save.name),
                esc("" if save.attempt is None else save.attempt),
                "true" if save.kept else "false",
                px,
                py,
                esc(label),
            )
        )
    caption = "%s over %s: %d of %d saves have a %s%s." % (
        metric,
        x_label,
        len(points),
        len(saves),
        "finite %s" % metric if x is None else "finite %s and %s" % (metric, x),
        "; log scale" if log else "",
    )
    if chosen is not None:
        bx, by = next((px, py) for px, py, save in points if save is chosen)
        cx, cy = sx(bx), sy(by)
        text = "best %s %s at #%d" % (metric, fmt(by), chosen.order)
        svg.append(
            '<circle class="best-marker" cx="%.2f" cy="%.2f" r="8" data-order="%d" '
            'data-mode="%s" style="fill:none;stroke:%s;stroke-width:2.5"/>'
            % (cx, cy, chosen.order, esc(best[0]), BEST_COLOUR)
        )
        anchor = "end" if cx > _LEFT + plot_w * 0.6 else "start"
        svg.append(
            '<text class="best-label" x="%.1f" y="%.1f" text-anchor="%s">%s</text>'
            % (cx + (-11 if anchor == "end" else 11), max(cy - 10, _TOP + 10), anchor, esc(text))
        )
        caption += " Best (%s, from %s): %s = %s at save #%d." % (
            best[0],
            best[1],
            metric,
            fmt(by),
            chosen.order,
        )
    svg.append("</svg>")
    return (
        '<figure class="metric-plot" data-metric="%s">%s<figcaption class="caption">%s'
        "</figcaption></figure>"
    ) % (
        esc(metric),
        "".join(svg),
        esc(caption),
    )


def _attempt_markers(saves, x, sx, x_lo, x_hi, bottom) -> list[str]:
    """A dashed vertical line where each attempt after the first starts (its first save)."""
    out: list[str] = []
    seen: set = set()
    for save in saves:
        if save.attempt in seen or save.attempt is None:
            continue
        first = not seen
        seen.add(save.attempt)
        x_val = float(save.order) if x is None else finite(save.values.get(x))
        if first or x_val is None or not x_lo <= x_val <= x_hi:
            continue
        xx = sx(x_val)
        out.append(
            '<line class="attempt-marker" data-attempt="%s" x1="%.1f" y1="%d" x2="%.1f" y2="%d" '
            'style="stroke:%s;stroke-width:1.5;stroke-dasharray:4 3"/>'
            % (esc(save.attempt), xx, _TOP, xx, bottom, ATTEMPT_COLOUR)
        )
        out.append(
            '<text class="attempt-label" x="%.1f" y="%d" text-anchor="start">attempt %s</text>'
            % (xx + 3, _TOP - 8, esc(save.attempt))
        )
    return out


def log_ticks(values: Sequence[float]) -> tuple[float, float, list[float]]:
    """Axis range and ticks of positive ``values`` on a log10 axis, as exponents: whole
    decades (every second one past 8 decades)."""
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    step = 1 if hi - lo <= 8 else 2
    hi = lo + step * max(1, math.ceil((hi - lo) / step))  # the top is a tick too
    return float(lo), float(hi), [float(k) for k in range(lo, hi + 1, step)]


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


def fmt(value: float) -> str:
    return "%d" % value if float(value).is_integer() and abs(value) < 1e6 else "%.4g" % value


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
