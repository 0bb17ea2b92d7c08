"""Aliases that name a checkpoint by role: ``"last"`` and ``"best:<metric>[:min|max]"``.

``current.checkpoint.load("best:val_loss")`` resolves among the running task's checkpoints;
the client and CLI accept ``"<target>@last"`` and ``"<target>@best:val_loss"`` for any target
(``Flow``, ``Flow/run``, ``Flow/run/step``, ``Flow/run/step/task``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.retention import numeric
from ..errors import CheckpointConfigError, CheckpointNotFound
from .reference import CheckpointReference


def is_alias(text: str) -> bool:
    return text == "last" or text.startswith("best:")


def pick(refs: Sequence[CheckpointReference], text: str, where: str) -> CheckpointReference:
    """The checkpoint ``text`` names among ``refs`` (newest first).

    Raises
    ------
    CheckpointNotFound
        No checkpoint (``last``) or none with the metric (``best:...``), naming ``where``.
    CheckpointConfigError
        A malformed alias.
    """
    if text == "last":
        marked = [r for r in refs if r.latest] or list(refs)
        if not marked:
            raise CheckpointNotFound("%s has no checkpoint." % where.capitalize())
        return marked[0]
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[1]
        or (len(parts) == 3 and parts[2] not in ("min", "max"))
    ):
        raise CheckpointConfigError(
            "%r is not an alias: use 'last', 'best:<metric>' or 'best:<metric>:max'." % text
        )
    metric, descending = parts[1], len(parts) == 3 and parts[2] == "max"
    scored = [r for r in refs if numeric(r.metadata.get(metric)) is not None]
    if not scored:
        seen = sorted({k for r in refs for k in r.metadata})
        raise CheckpointNotFound(
            "No checkpoint of %s has a numeric metadata field %r (fields seen: %s)."
            % (where, metric, ", ".join(seen) or "none")
        )
    # Stable sort over newest-first refs: ties go to the newest.
    return sorted(scored, key=lambda r: numeric(r.metadata[metric]), reverse=descending)[0]
