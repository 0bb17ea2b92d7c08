"""What a running task pushed to its card (``task/card_live.py``), as the renderer's inputs.

The task sends its saves (newest last, each with ``kept``: False once retention pruned it) and
its ``keep_best`` rules; the card draws them as it draws a finished task's listing and metrics
log: the kept saves are the listing, every save is a log entry (so pruned ones stay plotted).

Standard library only at module level (imported on every ``import metaflow`` through the card
package); our core modules inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

#: ``data["user"]["format"]`` of a task's push (``task/card_live.FORMAT``).
FORMAT = "metaflow-checkpointing-live/1"
#: Seconds between two reloads of a running task's card when the push does not say.
DEFAULT_REFRESH_SECONDS = 5.0


@dataclass
class LiveInputs:
    """The renderer's inputs from one push."""

    refs: list = field(default_factory=list)  # kept saves, newest first
    log: list = field(default_factory=list)  # MetricsEntry per save, oldest first
    pathspec: Optional[str] = None
    task_status: Optional[str] = None  # None: running
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS
    pushed_at: Optional[float] = None


def live_inputs(pushed: Any) -> LiveInputs:
    """The inputs of a push (``render_runtime``'s ``data["user"]``); an empty or foreign push
    (before the first save, or a user's own ``current.card.refresh``) is a task with no save.
    """
    from ...checkpointing.core.manifest import parse_key
    from ...checkpointing.core.metrics_log import MetricsEntry, numeric_fields
    from ...checkpointing.errors import CheckpointException

    out = LiveInputs()
    if not isinstance(pushed, Mapping) or pushed.get("format") != FORMAT:
        return out
    out.pathspec = _str(pushed.get("pathspec"))
    out.task_status = _str(pushed.get("task_status"))
    seconds = pushed.get("refresh_seconds")
    if isinstance(seconds, (int, float)) and seconds > 0:
        out.refresh_seconds = float(seconds)
    at = pushed.get("pushed_at")
    out.pushed_at = float(at) if isinstance(at, (int, float)) else None
    best = tuple(
        (str(b[0]), str(b[1])) for b in pushed.get("best") or () if isinstance(b, list) and b[1:]
    )
    for save in pushed.get("saves") or ():
        if not isinstance(save, Mapping):
            continue
        key = str(save.get("key"))
        try:
            h = parse_key(key)
        except (CheckpointException, ValueError):
            continue
        metadata = save.get("metadata")
        metrics = numeric_fields(metadata) if isinstance(metadata, Mapping) else {}
        entry = MetricsEntry(
            key, h.id, h.name, h.scope.attempt, h.created_ms, h.seq, h.latest, metrics, best
        )
        out.log.append(entry)
        if save.get("kept", True):
            out.refs.append({k: v for k, v in save.items() if k != "kept"})
    out.log.sort(key=lambda e: (e.attempt, e.created_ms, e.seq, e.id))
    order = {e.key: i for i, e in enumerate(out.log)}
    out.refs.sort(key=lambda r: order.get(str(r.get("key")), -1), reverse=True)
    return out


def _str(value: Any) -> Optional[str]:
    return None if value is None else str(value)
