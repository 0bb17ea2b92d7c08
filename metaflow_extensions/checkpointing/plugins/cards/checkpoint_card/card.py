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

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Optional

# The direct module, not ``metaflow.cards``: this runs while ``metaflow.plugins`` is still being
# initialised, and ``metaflow.cards`` pulls in the card client.
from metaflow.plugins.cards.card_modules.card import MetaflowCard

from .plot import esc, metadata_of, number, svg_plot

__all__ = ["CheckpointCard", "render_checkpoints"]

#: Longest metadata value shown in the table; the full value is in the cell's tooltip.
MAX_VALUE_CHARS = 80
#: Rows of the table (newest first); the plot always shows every checkpoint.
MAX_ROWS = 500


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
    parts = ["<h1>%s</h1>" % esc(title)]
    if error is not None or refs is None:
        parts.append(
            '<p class="error">Could not list the checkpoints of %s: %s</p>'
            % (esc(pathspec), esc(error or "no listing"))
        )
        return _page(title, parts)
    if not refs:
        parts.append('<p class="note">This task saved no checkpoints.</p>')
        return _page(title, parts)

    oldest_first = list(reversed(refs))
    order = {id(ref): i for i, ref in enumerate(oldest_first, start=1)}
    parts.append('<p class="summary">%s</p>' % esc(_summary(oldest_first)))

    chosen = metric if metric is not None else pick_metric(oldest_first, exclude=x)
    if chosen is None:
        parts.append('<p class="note">No numeric metadata to plot.</p>')
    else:
        parts.append(svg_plot(oldest_first, chosen, x))
    shown = refs[:MAX_ROWS]
    parts.append(_table(shown, order))
    if len(refs) > len(shown):
        parts.append(
            '<p class="note">Table shows the newest %d of %d checkpoints; list them all with '
            "<code>Checkpoint().list(&quot;%s&quot;)</code>.</p>"
            % (len(shown), len(refs), esc(pathspec))
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
        for key, value in metadata_of(ref).items():
            if key != exclude and number(value) is not None:
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
        % (esc(title), _CSS, "\n".join(parts))
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
                esc(ref.get("key", "")),
                order[id(ref)],
                order[id(ref)],
                esc(_created(ref.get("created_on"))),
                esc(ref.get("name", "")),
                size,
                esc(human_size(size)),
                esc(ref.get("attempt", "")),
                "true" if latest else "false",
                "latest" if latest else "",
                _metadata_cell(metadata_of(ref)),
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
            % (esc(key), esc(full), esc(short))
        )
    return "".join(cells)


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
