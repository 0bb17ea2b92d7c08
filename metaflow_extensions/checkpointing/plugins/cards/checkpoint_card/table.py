"""The card's table of saves: the newest :data:`TABLE_ROWS`, then the best ones, each with its
size, attempt, whether it is still stored, its status (uploaded, local, uploading, failed) and
its metadata.

Standard library only at module level (imported on every ``import metaflow`` through the card
package).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Optional

from .plot import esc
from .series import Save, metadata_of

#: Longest metadata value shown in the table; the full value is in the cell's tooltip.
MAX_VALUE_CHARS = 80
#: Newest saves in the table (the best save of each plotted metric is added below them); the
#: plots always show every save.
TABLE_ROWS = 20


def table(saves: Sequence[Save], best: dict[int, list[str]], pathspec: str) -> str:
    """The newest :data:`TABLE_ROWS` saves, newest first; then, past a row counting the saves
    not shown, the best save of each marked metric when it is older."""
    newest = list(reversed(saves))[:TABLE_ROWS]
    shown = {id(s) for s in newest}
    older_best = [s for s in reversed(saves) if id(s) in best and id(s) not in shown]
    rows = [
        '<table class="checkpoints"><thead><tr>'
        '<th class="num">#</th><th>Created (UTC)</th><th>Name</th><th class="num">Size</th>'
        '<th class="num">Attempt</th><th>Latest</th><th>Checkpoint</th><th>Status</th>'
        "<th>Metadata</th>"
        "</tr></thead><tbody>"
    ]
    rows += [_row(s, best.get(id(s), [])) for s in newest]
    hidden = len(saves) - len(newest) - len(older_best)
    if hidden > 0:
        rows.append(
            '<tr class="more" data-count="%d"><td colspan="9">%d more save%s not shown '
            "(every save is in the plots; <code>Checkpoint().list(&quot;%s&quot;)</code> lists "
            "the checkpoints kept)</td></tr>"
            % (hidden, hidden, "" if hidden == 1 else "s", esc(pathspec))
        )
    rows += [_row(s, best[id(s)]) for s in older_best]
    rows.append("</tbody></table>")
    return "".join(rows)


def _row(save: Save, best_of: list[str]) -> str:
    from ...checkpointing.fmt import human_size

    ref = save.ref
    if ref is not None:
        size = int(ref.get("size") or 0)
        size_cell = '<td class="num size" title="%d bytes">%s</td>' % (size, esc(human_size(size)))
        metadata = metadata_of(ref)
    else:
        size_cell = '<td class="num size" title="pruned: the checkpoint no longer exists"></td>'
        metadata = save.values
    badges = "".join('<span class="badge best">best %s</span>' % esc(m) for m in best_of)
    classes = "checkpoint" + ("" if save.kept else " pruned") + (" best" if best_of else "")
    return (
        '<tr class="%s" data-key="%s" data-order="%d" data-kept="%s"%s>'
        '<td class="num order">%d</td>'
        '<td class="created">%s</td>'
        '<td class="name">%s</td>'
        "%s"
        '<td class="num attempt">%s</td>'
        '<td class="latest" data-latest="%s">%s</td>'
        '<td class="state">%s%s</td>'
        "%s"
        '<td class="metadata">%s</td></tr>'
        % (
            classes,
            esc(save.key),
            save.order,
            "true" if save.kept else "false",
            ' data-best="%s"' % esc(" ".join(best_of)) if best_of else "",
            save.order,
            esc(_created(save.created_on)),
            esc(save.name),
            size_cell,
            esc("" if save.attempt is None else save.attempt),
            "true" if save.latest else "false",
            "latest" if save.latest else "",
            "kept" if save.kept else "pruned",
            badges,
            _status_cell(ref),
            _metadata_cell(metadata),
        )
    )


def _status_cell(ref: Optional[Mapping[str, Any]]) -> str:
    """Where the checkpoint stands: ``uploaded`` as text; ``local``, ``uploading`` and
    ``failed`` as badges (not in the flow's store yet, or never); empty once pruned."""
    if ref is None:
        return '<td class="status" data-status=""></td>'
    status = str(ref.get("status") or "uploaded")
    shown = esc(status)
    if status != "uploaded":
        shown = '<span class="badge status-%s">%s</span>' % (esc(status), esc(status))
    return '<td class="status" data-status="%s">%s</td>' % (esc(status), shown)


def _metadata_cell(metadata: Mapping[str, Any]) -> str:
    """``key=value`` per field, floats rounded as in the CLI's tables (``fmt.cell_json``);
    the tooltip has every digit."""
    from ...checkpointing.fmt import cell_json

    cells = []
    for key, value in metadata.items():
        is_text = isinstance(value, str)
        full = "%s=%s" % (key, value if is_text else json.dumps(value, sort_keys=True))
        shown = full if is_text else "%s=%s" % (key, cell_json(value))
        short = shown if len(shown) <= MAX_VALUE_CHARS else shown[: MAX_VALUE_CHARS - 1] + "\u2026"
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
