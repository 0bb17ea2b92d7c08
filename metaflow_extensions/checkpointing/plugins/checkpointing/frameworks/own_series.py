"""The checkpoint a framework callback resumes from: the newest of its own series.

A task loads one checkpoint when it starts (the newest of any series).  Several callbacks in one
step (two Trainers, or a Trainer beside the user's own ``current.checkpoint.save()``) each save
their own series, so each must resume from the newest ``latest=True`` checkpoint of *its*
series, never from whatever the task happened to load.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any, Optional

from ..errors import CheckpointWarning


def own_latest(checkpoint: Any, name: str, marker: str) -> Optional[str]:
    """Directory holding the newest ``latest=True`` checkpoint of series ``name`` that this
    task would resume from (a ``@retry`` attempt: this task's earlier attempts; a ``resume`` or
    an eager load: the task the loaded checkpoint came from), if it has file ``marker``.

    The checkpoint the task loaded is used as is when it is of series ``name``; another one of
    series ``name`` is loaded into a new temporary directory.  None: nothing to resume from (a
    first attempt, or no checkpoint of series ``name``).
    """
    if not getattr(checkpoint, "is_loaded", False):
        return None
    info = getattr(checkpoint, "info", None)
    if info is None:
        return None
    if info.name == name:
        return _holding(checkpoint.directory, name, marker)
    refs = [r for r in checkpoint.list(name=name) if r.latest]
    scope = getattr(checkpoint, "scope", None)
    if not refs and scope is not None and info.pathspec != scope.pathspec:
        # A resume or eager load: the task the loaded checkpoint came from.
        refs = [
            r for r in checkpoint.list(name=name, task=info.pathspec, attempt="all") if r.latest
        ]
    if not refs:
        return None
    return _holding(
        checkpoint.load(refs[0], path=tempfile.mkdtemp(prefix="mfckpt-%s-" % name)), name, marker
    )


def own_refs(checkpoint: Any, name: str) -> list[Any]:
    """Checkpoints of series ``name`` this task resumes from, newest first: its own (on a
    ``@retry``, its earlier attempts'), else, on a ``resume`` or an eager load, those of the
    task the loaded checkpoint came from.  What a callback saved in an earlier attempt (its
    best one) is found here, not in its memory, which a retry starts without."""
    lister = getattr(checkpoint, "list", None)
    if lister is None:
        return []
    refs = list(lister(name=name))
    info = getattr(checkpoint, "info", None)
    scope = getattr(checkpoint, "scope", None)
    if not refs and info is not None and scope is not None and info.pathspec != scope.pathspec:
        refs = list(lister(name=name, task=info.pathspec, attempt="all"))
    return refs


def _holding(directory: str, name: str, marker: str) -> Optional[str]:
    if os.path.isfile(os.path.join(directory, marker)):
        return directory
    # Something else saved into the callback's series last: say so rather than start silently.
    warnings.warn(
        "The newest checkpoint of series %r has no %s (was it saved by something other than "
        "the training callback?): training starts from scratch. Give the callback a series "
        "of its own with name=..." % (name, marker),
        CheckpointWarning,
        stacklevel=3,
    )
    return None
