"""Dates that never go back: a per-task logical clock, and the date of a new named version.

Wall clocks step back (NTP corrections, a VM resumed from a snapshot) and a retry may run on a
machine whose clock is behind the one of the earlier attempt.  If a save were dated by the wall
clock alone, a later save could sort below an earlier one, and listings (``order``), retries
(``task_order``) and retention would disagree on which checkpoint is the newest.

Each process that saves into a task keeps one :class:`TaskClock`.  It dates a save
``max(wall now, newest date already in this task + 1)``; the newest date is learned once from a
listing of the task (the one the load policy makes at the start of a retry, else the first save
of the process lists the task) and then kept in memory, advanced by every save of the process
and by any later listing of the task it sees.  So within one task a save is always dated after
every checkpoint its process knew of, which makes ``ManifestHeader.order`` and ``task_order``
agree there.  Across tasks and runs dates remain wall-clock times (see ``docs/concepts.md``).

Everything else users order by "newest" is dated the same way by :func:`after`: a new version of
a named checkpoint (whoever writes it: ``Checkpoint().save``, ``metaflow checkpoint upload``,
``current.model.save``, ``@checkpoint(models=["x=./path"])``, Hub snapshots; all go through
``CheckpointStore.save``) is dated after every version listed just before it commits, and a
promotion log entry after every entry of the log.  So a version published later from a machine
whose clock is behind is still the newest, and one published from a clock ahead does not hide
the versions published after it (they date after it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Optional

from . import manifest


def after(dates: Iterable[int], now: Optional[int] = None) -> int:
    """The date of something made after every one of ``dates``: ``max(now, newest + 1)``.

    Parameters
    ----------
    dates : iterable of int
        Dates (ms since the epoch) of what already exists: the versions of a named checkpoint,
        the entries of a promotion log.
    now : int, optional
        This machine's reading of the wall clock (default: read now, ``manifest.now_ms``).
    """
    # manifest.now_ms looked up each time: the one time source of the package (tests move it)
    now = manifest.now_ms() if now is None else int(now)
    newest = max(dates, default=None)
    return now if newest is None else max(now, int(newest) + 1)


class TaskClock:
    """Dates of the saves of one process into one task: strictly increasing, never below a
    checkpoint already known in the task, and equal to the wall clock when that is ahead."""

    def __init__(self) -> None:
        self._floor: Optional[int] = None  # newest date known in the task; None: not learned
        self._known = False
        self._lock = threading.Lock()

    @property
    def known(self) -> bool:
        """True once a complete listing of the task has been seen (:meth:`learn`)."""
        return self._known

    def learn(self, dates: Iterable[int]) -> None:
        """Take in the dates (``created_ms``) of every checkpoint of the task, as listed."""
        with self._lock:
            self._advance(dates)
            self._known = True

    def observe(self, dates: Iterable[int]) -> None:
        """Take in the dates of some checkpoints of the task (a partial listing, a commit)."""
        with self._lock:
            self._advance(dates)

    def tick(self) -> int:
        """The date of a new save: ``max(wall now, newest known + 1)``; remembered."""
        with self._lock:
            date = after(() if self._floor is None else (self._floor,))
            self._floor = date
            return date

    def _advance(self, dates: Iterable[int]) -> None:
        for d in dates:
            if self._floor is None or d > self._floor:
                self._floor = int(d)


__all__ = ["TaskClock", "after"]
