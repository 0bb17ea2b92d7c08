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
    """The attempt Metaflow knows as the latest of ``task`` (a pathspec or a ``Task``; a
    ``Task`` made with ``attempt=N`` answers N), or None when Metaflow cannot tell."""
    try:
        if not isinstance(task, str):
            return int(task.current_attempt)
        from metaflow import Task

        return int(Task(task, _namespace_check=False).current_attempt)
    except Exception:  # noqa: BLE001 - any failure of the lookup: fall back to the store
        return None


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
