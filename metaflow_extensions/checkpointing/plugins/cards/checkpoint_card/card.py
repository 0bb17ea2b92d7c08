"""Card type ``"checkpoint"``: a task's training as plots of its metrics and a table of its saves.

Attach it to a ``@checkpoint`` step with ``@card(type="checkpoint")``; options choose what to
plot (``metric``, ``x``, ``best``).  Every save is shown, also those retention pruned: the
task's metrics log (``core/metrics_log.py``) is merged with the checkpoints still listed.  The
card is one self-contained HTML page (inline CSS and SVG, no JavaScript, no external
resources) so it renders offline and in Metaflow's card viewer alike.

Live: while the task runs, the task pushes its saves after each commit (``task/card_live.py``)
and Metaflow renders them with :meth:`CheckpointCard.render_runtime` (the same page, from what
the task pushed: no store read); a running task's page reloads itself every
``refresh_interval`` seconds (``<meta http-equiv="refresh">``, still no JavaScript).  Each
save's ``status`` (uploaded, local, uploading, failed) is a table column; a task that ended
through ``pause()`` is shown as paused, never as failed.

This module is imported on every ``import metaflow`` (card packages are loaded eagerly): it
imports only the standard library and Metaflow's card base class at module level; the client
and the store are imported inside :meth:`CheckpointCard.render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

# The direct module, not ``metaflow.cards``: this runs while ``metaflow.plugins`` is still being
# initialised, and ``metaflow.cards`` pulls in the card client.
from metaflow.plugins.cards.card_modules.card import MetaflowCard

from .live import live_inputs
from .notes import (
    left_out_metrics_note,
    other_writers_note,
    refresh_tag,
    task_status_note,
    unknown_fields_note,
)
from .plot import PALETTE, esc, svg_plot
from .series import (
    MAX_DEFAULT_METRICS,
    Save,
    best_modes,
    best_save,
    finite,
    of_rank_0,
    parse_best_option,
    pick_metrics,
    saves_of,
)
from .table import table

__all__ = ["CheckpointCard", "render_checkpoints"]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 14px;
       color: #1f2328; margin: 16px; }
h1 { font-size: 18px; margin: 0 0 4px 0; }
.summary, .note, .caption { color: #59636e; margin: 4px 0 12px 0; }
.error { color: #b42318; background: #fef3f2; border: 1px solid #fecdca; padding: 8px;
         border-radius: 4px; }
figure { margin: 8px 0 12px 0; }
table { border-collapse: collapse; margin-top: 12px; }
th, td { border-bottom: 1px solid #d1d9e0; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.created, td.size { white-space: nowrap; }
td.metadata code { font-size: 12px; margin-right: 8px; white-space: nowrap; }
tr.pruned td { color: #59636e; }
tr.more td { color: #59636e; font-style: italic; text-align: center; }
.badge { font-size: 11px; border-radius: 8px; padding: 0 6px; margin-left: 4px;
         background: #fff8c5; border: 1px solid #d4a72c; white-space: nowrap; }
td.status .badge { margin-left: 0; }
.badge.status-local { background: #ddf4ff; border-color: #54aeff; }
.badge.status-uploading { background: #fbefff; border-color: #c297ff; }
.badge.status-failed { background: #ffebe9; border-color: #ff8182; color: #82071e; }
.task-status { padding: 6px 8px; border-radius: 4px; margin: 4px 0 12px 0; }
.task-status.running { background: #ddf4ff; border: 1px solid #54aeff; }
.task-status.paused { background: #fff8c5; border: 1px solid #d4a72c; }
.task-status.failed { background: #ffebe9; border: 1px solid #ff8182; }
svg.plot { background: #ffffff; border: 1px solid #d1d9e0; border-radius: 4px; }
svg.plot .axis { stroke: #59636e; stroke-width: 1; }
svg.plot .grid { stroke: #eaeef2; stroke-width: 1; }
svg.plot .tick-label { font-size: 11px; fill: #59636e; }
svg.plot .axis-label { font-size: 12px; fill: #1f2328; }
svg.plot .attempt-label, svg.plot .best-label { font-size: 11px; fill: #59636e;
    paint-order: stroke; stroke: #ffffff; stroke-width: 3px; stroke-linejoin: round; }
svg.plot .best-label { fill: #1f2328; font-weight: 600; }
svg.plot .series { fill: none; stroke-width: 2; }
svg.plot .point { stroke-width: 1.5; }
"""


class CheckpointCard(MetaflowCard):
    """Card type ``"checkpoint"``: the saves of a task, plotted and tabled.

    Parameters
    ----------
    options : dict, optional
        ``metric``: a metadata field, or a list of them, to plot (default: every field numeric
        in more than half of the saves, counters such as ``step`` aside, at most six).
        ``x``: metadata field for the x axis (default: save order, 1 = oldest).
        ``best``: ``"metric:min"``/``"metric:max"`` (or a list): which point is the best, for
        a metric the step's ``keep_best`` does not rank.
    components, graph, flow, **kwargs
        Passed by Metaflow to every card; unused.
    """

    type = "checkpoint"
    # Not RUNTIME_UPDATABLE: Metaflow would then run a second synchronous ``card create``
    # (``refresh``, a data update for a card's JavaScript: this one has none) at the end of
    # every task, ~2 s.  The task asks for runtime renders itself (``task/card_live.py``).

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
        if isinstance(metric, (list, tuple)):
            self._metric: Any = [str(m) for m in metric]
        else:
            self._metric = None if metric is None else str(metric)
        self._x = None if x is None else str(x)
        self._best = options.get("best")
        parse_best_option(self._best)  # refuse a bad spelling now, not when rendering

    def render(self, task: Any) -> str:
        """Render the card of ``task`` (a finished Metaflow client ``Task``).

        The checkpoints are listed once, in every namespace (a card shows what its own task
        saved, whoever renders it), and the task's metrics log is read from the store they live
        in.  A listing error is shown in the card instead of raised, so the card still says
        that the step has checkpoints and why they are not shown; a log that cannot be read
        leaves the plot with the checkpoints listed, and says so.

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
        log, log_error = (None, None) if not refs else read_log(refs)
        return render_checkpoints(
            refs,
            pathspec=pathspec,
            metric=self._metric,
            x=self._x,
            error=error,
            log=log,
            log_error=log_error,
            best=self._best,
            task_status=_task_status(refs or ()),
        )

    def render_runtime(self, task: Any, data: Mapping[str, Any]) -> str:
        """Render the card of a running task from what the task pushed (``data["user"]``,
        see ``task/card_live.py``): the same page as :meth:`render`, plus how the task
        stands; while it runs, the page reloads itself every ``refresh_interval`` seconds.

        Parameters
        ----------
        task : metaflow.Task
            The running task.
        data : dict
            Metaflow's runtime data; ``data["user"]`` is the task's push.

        Returns
        -------
        str
            A complete HTML document.
        """
        pushed = live_inputs((data or {}).get("user"))
        return render_checkpoints(
            pushed.refs,
            pathspec=pushed.pathspec or str(getattr(task, "pathspec", task)),
            metric=self._metric,
            x=self._x,
            log=pushed.log,
            best=self._best,
            task_status=pushed.task_status,
            running=pushed.task_status is None,
            refresh_seconds=pushed.refresh_seconds,
            updated_at=pushed.pushed_at,
        )


def read_log(refs: Sequence[Mapping[str, Any]]) -> tuple[Optional[list], Optional[str]]:
    """``(entries, None)``: the metrics log of the task of ``refs`` (read from the store of
    the newest), or ``(None, why)`` when it cannot be read."""
    try:
        from ...checkpointing.common.access import store_of
        from ...checkpointing.core import metrics_log
        from ...checkpointing.core.layout import task_prefix_of

        store = store_of(refs[0])
        prefix = task_prefix_of(str(refs[0].get("key")))
        return metrics_log.read(store.storage, prefix, store.options.workers), None
    except Exception as exc:  # the card still shows what was listed
        return None, "%s: %s" % (type(exc).__name__, exc)


def render_checkpoints(
    refs: Optional[Sequence[Mapping[str, Any]]],
    *,
    pathspec: str,
    metric: Any = None,
    x: Optional[str] = None,
    error: Optional[str] = None,
    log: Optional[Sequence[Any]] = None,
    log_error: Optional[str] = None,
    best: Any = None,
    task_status: Optional[str] = None,
    running: bool = False,
    refresh_seconds: float = 5.0,
    updated_at: Optional[float] = None,
) -> str:
    """Render the card's HTML from a checkpoint listing and the task's metrics log.

    Parameters
    ----------
    refs : sequence of CheckpointReference (or dict), optional
        The task's checkpoints, newest first, as ``Checkpoint().list()`` returns them.
        ``None`` when listing failed (see ``error``).
    pathspec : str
        The task's pathspec, shown in the title.
    metric : str or list of str, optional
        Metadata fields to plot, one plot each; default: :func:`.series.pick_metrics`.
    x : str, optional
        Metadata field for the x axis; default: save order (1 = oldest).
    error : str, optional
        Why the checkpoints could not be listed; rendered instead of table and plot.
    log : sequence of MetricsEntry, optional
        The task's metrics log, oldest first (every save, pruned ones too).
    log_error : str, optional
        Why the metrics log could not be read (shown as a note).
    best : str or list of str, optional
        The card's ``best`` option (``"metric:min|max"``).
    task_status : str, optional
        How the task's newest attempt ended: ``"paused"`` and ``"failed"`` are said at the
        top (``"succeeded"`` and None are not).
    running : bool
        The task is still running (a live render): said at the top, and the page reloads
        itself every ``refresh_seconds``.
    refresh_seconds : float
        See ``running``.
    updated_at : float, optional
        When the task pushed what is shown (epoch seconds), for a live render.

    Returns
    -------
    str
        A complete, self-contained HTML document.
    """
    title = "Checkpoints of %s" % pathspec
    parts = ["<h1>%s</h1>" % esc(title)]
    head = refresh_tag(refresh_seconds) if running else ""
    status_note = task_status_note(task_status, running, updated_at)
    if status_note:
        parts.append(status_note)
    if error is not None or refs is None:
        parts.append(
            '<p class="error">Could not list the checkpoints of %s: %s</p>'
            % (esc(pathspec), esc(error or "no listing"))
        )
        return _page(title, parts, head)
    refs, other_writers = of_rank_0(refs)
    saves = saves_of(refs, log)
    if other_writers:
        parts.append(other_writers_note(other_writers, pathspec))
    if not saves:
        text = "No checkpoint saved yet." if running else "This task saved no checkpoints."
        parts.append('<p class="note">%s</p>' % text)
        return _page(title, parts, head)

    parts.append('<p class="summary">%s</p>' % esc(_summary(saves)))
    if any(not s.kept for s in saves):
        parts.append(
            '<p class="note legend">Filled points are checkpoints still stored; hollow ones were '
            "pruned (retention or a delete): their metrics come from the task's metrics log.</p>"
        )
    if log_error is not None:
        parts.append(
            '<p class="note log-error">The metrics log could not be read (%s): only the %d '
            "checkpoints listed are shown.</p>" % (esc(log_error), len(refs))
        )
    if metric is None:
        candidates = pick_metrics(saves, exclude=x, limit=None)
        metrics = candidates[:MAX_DEFAULT_METRICS]
        parts.append(left_out_metrics_note(metrics, candidates))
    else:
        metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    parts.append(unknown_fields_note(saves, [] if metric is None else metrics, x))
    bests = best_modes(metrics, log, best)
    if not metrics:
        parts.append('<p class="note">No numeric metadata to plot.</p>')
    for i, name in enumerate(metrics):
        parts.append(svg_plot(saves, name, x, PALETTE[i % len(PALETTE)], bests.get(name)))
    parts.append(table(saves, _best_rows(saves, metrics, x, bests), pathspec))
    return _page(title, parts, head)


# ---------------------------------------------------------------------------------- pieces


def _page(title: str, parts: list[str], head: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">%s'
        "<title>%s</title><style>%s</style></head>\n<body>\n%s\n</body></html>\n"
        % (head, esc(title), _CSS, "\n".join(parts))
    )


def _task_status(refs: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """How the newest attempt among ``refs`` ended, as the listing says (None: unknown)."""
    attempts = [r for r in refs if isinstance(r.get("attempt"), int)]
    if not attempts:
        return None
    newest = max(r["attempt"] for r in attempts)
    found = {r.get("task_status") for r in attempts if r["attempt"] == newest}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def _summary(saves: Sequence[Save]) -> str:
    from ...checkpointing.fmt import human_size

    kept = [s for s in saves if s.kept]
    total = sum(int(s.ref.get("size") or 0) for s in kept if s.ref is not None)
    attempts = sorted({s.attempt for s in saves if s.attempt is not None})
    text = "%d save%s" % (len(saves), "" if len(saves) == 1 else "s")
    if len(kept) == len(saves):
        text = "%d checkpoint%s, %s in total" % (
            len(saves),
            "" if len(saves) == 1 else "s",
            human_size(total),
        )
    else:
        text += "; %d checkpoint%s kept (%s), %d pruned" % (
            len(kept),
            "" if len(kept) == 1 else "s",
            human_size(total),
            len(saves) - len(kept),
        )
    if attempts:
        text += ", attempt%s %s" % (
            "" if len(attempts) == 1 else "s",
            ", ".join(str(a) for a in attempts),
        )
    return text + "."


def _best_rows(
    saves: Sequence[Save], metrics: Sequence[str], x: Optional[str], bests: dict
) -> dict[int, list[str]]:
    """``{id(save): [metric, ...]}``: the save each marked metric ranks best."""
    out: dict[int, list[str]] = {}
    for metric in metrics:
        if metric not in bests:
            continue
        points = []
        for save in saves:
            y = finite(save.values.get(metric))
            px = float(save.order) if x is None else finite(save.values.get(x))
            if y is not None and px is not None:
                points.append((px, y, save))
        chosen = best_save(points, bests[metric][0])
        if chosen is not None:
            out.setdefault(id(chosen), []).append(metric)
    return out
