"""The card's notes: what it leaves out (other writers' checkpoints, metrics past the plot
limit, option fields no save has) and how the task stands (running, paused, failed)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Optional

from .plot import esc
from .series import Save, finite


def other_writers_note(count: int, pathspec: str) -> str:
    """Checkpoints of ranks other than 0 are not plotted: say how many, and how to list them."""
    return (
        '<p class="note other-writers" data-count="%d">%d checkpoint%s saved by other writers '
        "(ranks of a <code>@parallel</code> step but rank 0) left out: <code>metaflow "
        "checkpoint list %s</code> lists them.</p>"
        % (count, count, "" if count == 1 else "s", esc(pathspec))
    )


def left_out_metrics_note(plotted: Sequence[str], candidates: Sequence[str]) -> str:
    """``""``, or a note naming the metrics past the plot limit and how to choose them."""
    if len(candidates) <= len(plotted):
        return ""
    rest = [m for m in candidates if m not in plotted]
    return (
        '<p class="note left-out-metrics" data-count="%d">Plotted %d of %d metrics (not '
        "plotted: %s); choose with the card option <code>metric=[...]</code>.</p>"
        % (len(rest), len(plotted), len(candidates), esc(", ".join(rest)))
    )


def unknown_fields_note(saves: Sequence[Save], metrics: Sequence[str], x: Optional[str]) -> str:
    """``""``, or a note naming the ``metric``/``x`` options no save has (a typo, most often)
    and the numeric fields the saves do have."""
    present = {k for s in saves for k in s.values}
    asked = [("metric", m) for m in metrics] + ([("x", x)] if x is not None else [])
    unknown = [(option, name) for option, name in asked if name not in present]
    if not unknown:
        return ""
    numeric = sorted({k for s in saves for k, v in s.values.items() if finite(v) is not None})
    return '<p class="note unknown-fields">No save has a numeric %s; numeric fields: %s.</p>' % (
        esc(", ".join("%s=%r" % pair for pair in unknown)),
        esc(", ".join(numeric) or "none"),
    )


def refresh_tag(seconds: float) -> str:
    """Reload the page (the newest render) every ``seconds``: a running task's card."""
    return '<meta http-equiv="refresh" content="%d">' % max(1, int(round(seconds)))


#: What the top of the card says of a task that ended otherwise than by succeeding.
_ENDED = {
    "paused": "This task paused (current.checkpoint.pause()): it was not retried; "
    "<code>resume</code> continues from its newest checkpoint.",
    "failed": "This task's attempt failed; the checkpoints below are what it saved.",
}


def task_status_note(task_status: Optional[str], running: bool, updated_at: Optional[float]) -> str:
    """The line at the top saying how the task stands (``""``: it succeeded, or unknown)."""
    if running:
        when = ""
        if updated_at is not None:
            moment = datetime.fromtimestamp(updated_at, timezone.utc)
            when = " (updated %s UTC)" % moment.strftime("%Y-%m-%d %H:%M:%S")
        return (
            '<p class="task-status running" data-task-status="running">Task running: this card '
            "shows each save as the task makes it%s.</p>" % esc(when)
        )
    if task_status not in _ENDED:
        return ""
    return '<p class="task-status %s" data-task-status="%s">%s</p>' % (
        task_status,
        task_status,
        _ENDED[task_status],
    )
