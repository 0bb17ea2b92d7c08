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
from typing import Any, Callable, Optional

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
    refs = own_refs(checkpoint, name, keep=lambda r: r.latest)
    if not refs:
        return None
    return _holding(
        checkpoint.load(refs[0], path=tempfile.mkdtemp(prefix="mfckpt-%s-" % name)), name, marker
    )


def own_refs(checkpoint: Any, name: str, keep: Optional[Callable[[Any], bool]] = None) -> list[Any]:
    """Checkpoints of series ``name`` this task resumes from, newest first: its own (on a
    ``@retry``, its earlier attempts'), else, on a ``resume`` or an eager load, those of the
    task the loaded checkpoint came from.  What a callback saved in an earlier attempt (its
    best one) is found here, not in its memory, which a retry starts without.

    ``keep`` (default: all) filters both listings, *before* deciding to fall back: a task with
    checkpoints of ``name`` but none kept resumes from the loaded-from task's kept ones.
    """
    lister = getattr(checkpoint, "list", None)
    if lister is None:
        return []
    refs = [r for r in lister(name=name) if keep is None or keep(r)]
    info = getattr(checkpoint, "info", None)
    scope = getattr(checkpoint, "scope", None)
    if not refs and info is not None and scope is not None and info.pathspec != scope.pathspec:
        # A resume or eager load: the task the loaded checkpoint came from.
        refs = [
            r
            for r in lister(name=name, task=info.pathspec, attempt="all")
            if keep is None or keep(r)
        ]
    return refs


def own_best(refs: list[Any], up_to_step: int, exact_step: Optional[int] = None) -> Any:
    """The newest of ``refs`` (newest first, as :func:`own_refs` lists them) saved at or
    before step ``up_to_step`` (and, if given, at exactly ``exact_step``); None if none is.

    A best saved *after* the step a fit resumed at (a crash between that best save and the
    next ``latest`` one) belongs to steps the resumed fit trains again, maybe to another
    result: it is never the run's best.  Both framework callbacks take their earlier
    attempt's best from here, so the rule lives once.
    """
    for ref in refs:
        step = (ref.metadata or {}).get("step", 0)
        if step <= up_to_step and (exact_step is None or step == exact_step):
            return ref
    return None


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
