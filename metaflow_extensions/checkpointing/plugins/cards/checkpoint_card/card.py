"""The ``checkpoint`` card: a task's checkpoints as a table and a metric plotted over saves.

Attach it to a ``@checkpoint`` step with ``@card(type="checkpoint")``; options
``{"metric": "loss", "x": "step"}`` choose what to plot.  The card is one self-contained HTML
page (inline CSS and SVG, no JavaScript, no external resources) so it renders offline and in
Metaflow's card viewer alike.

This module is imported on every ``import metaflow`` (card packages are loaded eagerly): it
imports only the standard library and Metaflow's card base class at module level; the client
is imported inside :meth:`CheckpointCard.render`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Optional

# The direct module, not ``metaflow.cards``: this runs while ``metaflow.plugins`` is still being
# initialised, and ``metaflow.cards`` pulls in the card client.
from metaflow.plugins.cards.card_modules.card import MetaflowCard

__all__ = ["CheckpointCard", "render_checkpoints"]

#: Longest metadata value shown in the table; the full value is in the cell's tooltip.
MAX_VALUE_CHARS = 80
#: Rows of the table (newest first); the plot always shows every checkpoint.
MAX_ROWS = 500

# Plot geometry (SVG user units).
_WIDTH, _HEIGHT = 640, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 20, 20, 52

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 14px;
       color: #1f2328; margin: 16px; }
h1 { font-size: 18px; margin: 0 0 4px 0; }
.summary, .note, .caption { color: #59636e; margin: 4px 0 12px 0; }
.error { color: #b42318; background: #fef3f2; border: 1px solid #fecdca; padding: 8px;
         border-radius: 4px; }
table { border-collapse: collapse; margin-top: 12px; }
th, td { border-bottom: 1px solid #d1d9e0; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.created, td.size { white-space: nowrap; }
td.metadata code { font-size: 12px; margin-right: 8px; white-space: nowrap; }
svg.plot { background: #ffffff; border: 1px solid #d1d9e0; border-radius: 4px; }
svg.plot .axis { stroke: #59636e; stroke-width: 1; }
svg.plot .grid { stroke: #eaeef2; stroke-width: 1; }
svg.plot .tick-label { font-size: 11px; fill: #59636e; }
svg.plot .axis-label { font-size: 12px; fill: #1f2328; }
svg.plot .series { fill: none; stroke: #0969da; stroke-width: 2; }
svg.plot .point { fill: #0969da; stroke: #ffffff; stroke-width: 1; }
"""


class CheckpointCard(MetaflowCard):
    """Card type ``"checkpoint"``: the checkpoints saved by a task.

    Shows a table of every checkpoint the task saved (all attempts) and an SVG line plot of one
    numeric metadata field over the saves, oldest to newest.

    Parameters
    ----------
    options : dict, optional
        ``metric``: metadata field to plot (default: the first field that is numeric in most
        checkpoints). ``x``: metadata field for the x axis (default: save order, 1 = oldest).
    components, graph, flow, **kwargs
        Passed by Metaflow to every card; unused.
    """

    type = "checkpoint"

    def __init__(
        self,
        options: Optional[Mapping[str, Any]] = None,
        components: Any = None,
        graph: Any = None,
        flow: Any = None,
        **kwargs: Any,
    ) -> None:
        options = options or {}
        if not isinstance(options, Mapping):
            # A TypeError makes Metaflow render its "incorrect card arguments" card.
            raise TypeError("@card(type='checkpoint') options must be a dict, not %r" % (options,))
        metric, x = options.get("metric"), options.get("x")
        self._metric = None if metric is None else str(metric)
        self._x = None if x is None else str(x)

    def render(self, task: Any) -> str:
        """Render the card of ``task`` (a finished Metaflow client ``Task``).

        The checkpoints are listed once, in every namespace (a card shows what its own task
        saved, whoever renders it). A listing error is shown in the card instead of raised, so
        the card still says that the step has checkpoints and why they are not shown.

        Parameters
        ----------
        task : metaflow.Task
            The task the card belongs to.

        Returns
        -------
        str
            A complete HTML document.
        """
        pathspec = str(getattr(task, "pathspec", task))
        refs: Optional[list] = None
        error = None
        try:
            from metaflow import Checkpoint, get_namespace, namespace

            previous = get_namespace()
            namespace(None)
            try:
                refs = Checkpoint().list(pathspec)
            finally:
                namespace(previous)
        except Exception as exc:  # any failure becomes a visible one-line message
            error = "%s: %s" % (type(exc).__name__, exc)
        return render_checkpoints(
            refs, pathspec=pathspec, metric=self._metric, x=self._x, error=error
        )


def render_checkpoints(
    refs: Optional[Sequence[Mapping[str, Any]]],
    *,
    pathspec: str,
    metric: Optional[str] = None,
    x: Optional[str] = None,
    error: Optional[str] = None,
) -> str:
    """Render the card's HTML from a checkpoint listing.

    Parameters
    ----------
    refs : sequence of CheckpointReference (or dict), optional
        The task's checkpoints, newest first, as ``Checkpoint().list()`` returns them.
        ``None`` when listing failed (see ``error``).
    pathspec : str
        The task's pathspec, shown in the title.
    metric : str, optional
        Metadata field to plot; default: :func:`pick_metric`.
    x : str, optional
        Metadata field for the x axis; default: save order (1 = oldest).
    error : str, optional
        Why the checkpoints could not be listed; rendered instead of table and plot.

    Returns
    -------
    str
        A complete, self-contained HTML document.
    """
    title = "Checkpoints of %s" % pathspec
    parts = ["<h1>%s</h1>" % _esc(title)]
    if error is not None or refs is None:
        parts.append(
            '<p class="error">Could not list the checkpoints of %s: %s</p>'
            % (_esc(pathspec), _esc(error or "no listing"))
        )
        return _page(title, parts)
    if not refs:
        parts.append('<p class="note">This task saved no checkpoints.</p>')
        return _page(title, parts)

    oldest_first = list(reversed(refs))
    order = {id(ref): i for i, ref in enumerate(oldest_first, start=1)}
    parts.append('<p class="summary">%s</p>' % _esc(_summary(oldest_first)))

    chosen = metric if metric is not None else pick_metric(oldest_first, exclude=x)
    if chosen is None:
        parts.append('<p class="note">No numeric metadata to plot.</p>')
    else:
        parts.append(_plot(oldest_first, chosen, x))
    shown = refs[:MAX_ROWS]
    parts.append(_table(shown, order))
    if len(refs) > len(shown):
        parts.append(
            '<p class="note">Table shows the newest %d of %d checkpoints; list them all with '
            "<code>Checkpoint().list(&quot;%s&quot;)</code>.</p>"
            % (len(shown), len(refs), _esc(pathspec))
        )
    return _page(title, parts)


def pick_metric(refs: Sequence[Mapping[str, Any]], exclude: Optional[str] = None) -> Optional[str]:
    """The first metadata field (in save order) that is numeric in most checkpoints.

    Parameters
    ----------
    refs : sequence of CheckpointReference (or dict)
        Checkpoints, oldest first.
    exclude : str, optional
        A field never picked (the x axis field).

    Returns
    -------
    str or None
        The field's name, or ``None`` if no field is numeric in more than half of ``refs``.
    """
    counts: dict[str, int] = {}
    for ref in refs:
        for key, value in _metadata(ref).items():
            if key != exclude and _number(value) is not None:
                counts[key] = counts.get(key, 0) + 1
    # dicts keep insertion order: the first field seen (oldest checkpoint first) wins ties.
    for key, count in counts.items():
        if count * 2 > len(refs):
            return key
    return None


# ---------------------------------------------------------------------------------- pieces


def _page(title: str, parts: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>%s</title><style>%s</style></head>\n<body>\n%s\n</body></html>\n"
        % (_esc(title), _CSS, "\n".join(parts))
    )


def _summary(oldest_first: list) -> str:
    from ...checkpointing.fmt import human_size

    total = sum(int(r.get("size") or 0) for r in oldest_first)
    attempts = sorted({r.get("attempt") for r in oldest_first if r.get("attempt") is not None})
    text = "%d checkpoint%s, %s in total" % (
        len(oldest_first),
        "" if len(oldest_first) == 1 else "s",
        human_size(total),
    )
    if attempts:
        text += ", attempt%s %s" % (
            "" if len(attempts) == 1 else "s",
            ", ".join(str(a) for a in attempts),
        )
    return text + "."


def _table(refs: Sequence[Mapping[str, Any]], order: dict) -> str:
    from ...checkpointing.fmt import human_size

    rows = [
        '<table class="checkpoints"><thead><tr>'
        '<th class="num">#</th><th>Created (UTC)</th><th>Name</th><th class="num">Size</th>'
        '<th class="num">Attempt</th><th>Latest</th><th>Metadata</th>'
        "</tr></thead><tbody>"
    ]
    for ref in refs:  # newest first, like Checkpoint().list()
        size = int(ref.get("size") or 0)
        latest = bool(ref.get("latest"))
        rows.append(
            '<tr class="checkpoint" data-key="%s" data-order="%d">'
            '<td class="num order">%d</td>'
            '<td class="created">%s</td>'
            '<td class="name">%s</td>'
            '<td class="num size" title="%d bytes">%s</td>'
            '<td class="num attempt">%s</td>'
            '<td class="latest" data-latest="%s">%s</td>'
            '<td class="metadata">%s</td></tr>'
            % (
                _esc(ref.get("key", "")),
                order[id(ref)],
                order[id(ref)],
                _esc(_created(ref.get("created_on"))),
                _esc(ref.get("name", "")),
                size,
                _esc(human_size(size)),
                _esc(ref.get("attempt", "")),
                "true" if latest else "false",
                "latest" if latest else "",
                _metadata_cell(_metadata(ref)),
            )
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _metadata_cell(metadata: Mapping[str, Any]) -> str:
    cells = []
    for key, value in metadata.items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        full = "%s=%s" % (key, shown)
        short = full if len(full) <= MAX_VALUE_CHARS else full[: MAX_VALUE_CHARS - 1] + "\u2026"
        cells.append(
            '<code class="kv" data-field="%s" title="%s">%s</code>'
            % (_esc(key), _esc(full), _esc(short))
        )
    return "".join(cells)


def _plot(oldest_first: list, metric: str, x: Optional[str]) -> str:
    """SVG line plot of ``metric`` in save order; checkpoints without it are left out."""
    points = []  # (x value, y value, save order, ref)
    for i, ref in enumerate(oldest_first, start=1):
        md = _metadata(ref)
        y_val = _number(md.get(metric))
        x_val = float(i) if x is None else _number(md.get(x))
        if y_val is not None and x_val is not None:
            points.append((x_val, y_val, i, ref))
    x_label = "save # (oldest = 1)" if x is None else x
    if not points:
        need = metric if x is None else "%s and %s" % (metric, x)
        return '<p class="note">No checkpoint has numeric metadata %s to plot.</p>' % _esc(need)

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
        % (_WIDTH, _HEIGHT, _WIDTH, _HEIGHT, _esc(metric), _esc(x_label)),
        "<title>%s</title>" % _esc("%s over %s" % (metric, x_label)),
    ]
    for t in y_ticks:
        y = sy(t)
        svg.append(
            '<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>' % (_LEFT, y, right, y)
        )
        svg.append(
            '<text class="tick-label y-tick" x="%.1f" y="%.1f" text-anchor="end" '
            'dominant-baseline="middle">%s</text>' % (_LEFT - 6, y, _esc(_fmt(t)))
        )
    for t in x_ticks:
        xx = sx(t)
        svg.append(
            '<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>'
            % (xx, bottom, xx, bottom + 4)
        )
        svg.append(
            '<text class="tick-label x-tick" x="%.1f" y="%.1f" text-anchor="middle">%s</text>'
            % (xx, bottom + 16, _esc(_fmt(t)))
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
        % (_LEFT + plot_w / 2, _HEIGHT - 10, _esc(x_label))
    )
    svg.append(
        '<text class="axis-label y-label" x="0" y="0" text-anchor="middle" '
        'transform="translate(16 %.1f) rotate(-90)">%s</text>' % (_TOP + plot_h / 2, _esc(metric))
    )
    coords = ["%.2f,%.2f" % (sx(px), sy(py)) for px, py, _, _ in points]
    svg.append('<polyline class="series" points="%s"/>' % " ".join(coords))
    for (px, py, i, ref), xy in zip(points, coords):
        cx, cy = xy.split(",")
        label = "#%d %s: %s=%s" % (i, ref.get("name", ""), metric, _fmt(py))
        if x is not None:
            label += ", %s=%s" % (x, _fmt(px))
        svg.append(
            '<circle class="point" cx="%s" cy="%s" r="3.5" data-order="%d" data-name="%s" '
            'data-x="%r" data-y="%r"><title>%s</title></circle>'
            % (cx, cy, i, _esc(ref.get("name", "")), px, py, _esc(label))
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
        _esc(caption),
    )


# ---------------------------------------------------------------------------------- helpers


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


def _number(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None (bools, strings, NaN and infinities are not plotted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metadata(ref: Mapping[str, Any]) -> Mapping[str, Any]:
    md = ref.get("metadata")
    return md if isinstance(md, Mapping) else {}


def _created(created_on: Any) -> str:
    """``2024-05-01T10:00:00.123+00:00`` as ``2024-05-01 10:00:00.123`` (saves are often less
    than a second apart); unknown formats as-is."""
    if not isinstance(created_on, str):
        return "" if created_on is None else str(created_on)
    try:
        moment = datetime.fromisoformat(created_on.replace("Z", "+00:00"))
    except ValueError:
        return created_on
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _fmt(value: float) -> str:
    return "%d" % value if float(value).is_integer() and abs(value) < 1e15 else "%.4g" % value


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
