"""Which attempts of a task a listing shows: the ``attempt=`` argument and "the latest attempt".

``list(task=...)`` lists that task's latest attempt unless ``attempt=`` says otherwise (what
code written for other ``@checkpoint`` extensions relies on); ``attempt=N`` selects one attempt
and ``attempt="all"`` every attempt.  The latest attempt of the running task is its own; of
another task, the one Metaflow recorded last (its client, namespace check off), or, when
Metaflow cannot tell (no metadata reachable, a task unknown to it), the highest attempt among
the task's checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

from ..core.manifest import ManifestHeader
from ..errors import CheckpointConfigError

#: ``attempt=ALL``: every attempt of the task.
ALL = "all"

#: What ``attempt=`` holds once parsed: None (the default), an attempt number, or :data:`ALL`.
Attempt = Union[None, int, str]


def parse_attempt(attempt: Any) -> Attempt:
    """Check an ``attempt=`` argument: None, an attempt number (an int or its digits, as
    ``"1"``) or ``"all"``.

    Raises
    ------
    CheckpointConfigError
        Anything else (a negative number, a bool, another string): naming the accepted values.
    """
    if attempt is None or attempt == ALL:
        return attempt
    number: Optional[int] = None
    if isinstance(attempt, int) and not isinstance(attempt, bool):
        number = attempt
    elif isinstance(attempt, str) and attempt.strip().isdigit() and attempt.strip().isascii():
        number = int(attempt.strip())
    if number is None or number < 0:
        raise CheckpointConfigError(
            "attempt=%r is not an attempt: pass an attempt number (0, 1, ...), 'all' for every "
            "attempt, or nothing (list(task=...) then lists the task's latest attempt)."
            % (attempt,)
        )
    return number


def store_filter(attempt: Attempt) -> Optional[int]:
    """The attempt a store listing is filtered on (None: every attempt, narrowed later)."""
    return attempt if isinstance(attempt, int) else None


def metaflow_attempt(task: Any) -> Optional[int]:
    """The attempt Metaflow knows as the latest of ``task`` (a pathspec, in any spelling
    :func:`..common.refspec.task_target` accepts, or a ``Task``; a ``Task`` made with
    ``attempt=N`` answers N), or None when Metaflow cannot tell.

    "Cannot tell" is exactly: Metaflow does not know the task (``MetaflowNotFound``: its
    metadata is in another metadata service or was removed), or its metadata cannot be reached
    (``OSError``: a service down, a directory unmounted).  Any other error (a bad pathspec,
    a bug) is raised, never turned into "the highest attempt among its checkpoints".
    """
    from metaflow.exception import MetaflowNotFound

    from .refspec import task_target

    if not isinstance(task, str):
        return int(task.current_attempt)
    pathspec = task_target(task).pathspec  # "F/r/s/1/", " /F/r/s/1": one task
    from metaflow import Task

    try:
        return int(Task(pathspec, _namespace_check=False).current_attempt)
    except (MetaflowNotFound, OSError):
        return None


#: How a task lists another task's checkpoints: the client's listing, registered by it when
#: imported (every ``import metaflow`` imports it), so ``current.checkpoint.list(task=...)``
#: answers exactly as ``Checkpoint().list(task=...)`` from a notebook (one code path, below
#: the client's layer).  None until registered: the task lists by key prefix alone.
_TASK_LISTER: Optional[Callable[..., list]] = None


def register_task_lister(lister: Callable[..., list]) -> None:
    """Set how a task lists another task (see :data:`_TASK_LISTER`)."""
    global _TASK_LISTER
    _TASK_LISTER = lister


def task_lister() -> Optional[Callable[..., list]]:
    """The registered lister of other tasks' checkpoints, or None."""
    return _TASK_LISTER


def latest_attempts(
    headers: Iterable[ManifestHeader], known: Callable[[str], Optional[int]]
) -> list[ManifestHeader]:
    """The headers of each task's latest attempt, in their order.

    ``known(pathspec)`` gives a task's latest attempt when it can tell (the running task's
    own, or Metaflow's); otherwise it is the highest attempt among that task's ``headers``.
    A task whose latest attempt saved nothing keeps nothing.
    """
    headers = list(headers)
    highest: dict[str, int] = {}
    for h in headers:
        p = h.scope.pathspec
        highest[p] = max(highest.get(p, h.scope.attempt), h.scope.attempt)
    latest: dict[str, int] = {}
    for p, top in highest.items():
        told = known(p)
        latest[p] = top if told is None else told
    return [h for h in headers if h.scope.attempt == latest[h.scope.pathspec]]
