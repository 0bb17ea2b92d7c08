"""Fences: a save abandoned after a signal never commits, however late its thread goes on.

A blocking or background save that has not committed when the time allowed after a signal
runs out (``task/interrupts.py``) is *abandoned*: the task stops waiting for it, but its thread
may still be uploading.  A :class:`Fence` is handed to ``CheckpointStore.save`` through its
``progress`` and ``reuse`` hooks (:meth:`Fence.commit`): once abandoned, the save's uploads stop at
their next chunk and its manifest is never written, so the previous checkpoint stays the latest
and what the log said stays true.  The blobs it uploaded are unreferenced, reclaimed by garbage
collection like those of a crashed save.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, TypeVar

from ..errors import CheckpointException

#: Seconds a manifest write in flight at the deadline is still waited for (one small object),
#: so that the log can say whether that save committed.
COMMIT_GRACE = 0.5

T = TypeVar("T")


class Done:
    """A one-time event that the task's thread waits for (a save's end, its published
    result, the listing started at a signal): a bare lock, acquired with a timeout.  The task's
    thread runs signal handlers, and one raising in the middle of ``threading.Event.wait``
    (Metaflow's ``@timeout``) can leave the event's condition half released, so that
    ``RuntimeError: release unlocked lock`` replaces the handler's exception (the likely
    source of one such error among 1,200 alarms of
    ``test_a_timeout_firing_during_small_saves_always_reaches_the_step``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        """Mark it done (again: nothing more)."""
        with _SETTING:
            if not self._set:
                self._set = True
                self._lock.release()

    def wait(self, timeout: Optional[float]) -> bool:
        """Whether it is done, waiting ``timeout`` s at most (None: until it is)."""
        if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        self._lock.release()  # done it stays, for a later wait
        return True


#: Serialises :meth:`Done.set` calls (a second one must not release the lock a waiter holds).
_SETTING = threading.Lock()


class SaveAbandoned(CheckpointException):
    """A save that had not committed when the time allowed after a signal ran out.

    Internal: user code sees it only as the error of an abandoned background save's handle and
    as the cause of :class:`CheckpointInterrupted`.  ``may_have_committed`` is True when its
    manifest write was still in flight (then it is unknown whether it committed).
    """

    may_have_committed = False


class Fence:
    """Keeps one save from committing once it is abandoned.

    :meth:`commit` runs ``store.save`` with two hooks: its progress callback raises once the
    save is abandoned (no new upload starts), and its check right before the manifest write
    takes a lock that :meth:`abandon` also takes, so "abandoned" and "committed" exclude each
    other: once :meth:`abandon` returned :attr:`ABANDONED`, no manifest of this save is written.
    """

    OPEN, COMMITTING, COMMITTED, ABANDONED = "open", "committing", "committed", "abandoned"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = self.OPEN
        self._error: Optional[SaveAbandoned] = None
        self._published = Done()
        self._value: Any = None

    def publish(self, value: Any) -> None:
        """The save's result, once it committed and is recorded, before its retention prune:
        after a signal, whoever waits for the save takes it from here instead of waiting for
        the prune's requests (see :meth:`result`)."""
        self._value = value
        self._published.set()

    def result(self, timeout: float) -> tuple[bool, Any]:
        """``(True, value)`` once :meth:`publish` was called (waiting ``timeout`` s at most),
        else ``(False, None)``."""
        if self._published.wait(timeout):
            return True, self._value
        return False, None

    def commit(
        self,
        save: Callable[..., T],
        reuse: Optional[Callable[[Any], Optional[Any]]] = None,
    ) -> T:
        """``save(progress=..., reuse=...)`` (``CheckpointStore.save``'s hooks) through the fence.

        ``reuse`` is the caller's own check of the manifest about to be committed (an already
        committed one to return instead); it runs before the fence's.

        Raises
        ------
        SaveAbandoned
            The save was abandoned before its manifest write.
        """
        try:
            result = save(progress=self._progress, reuse=lambda m: self._before_commit(m, reuse))
        except BaseException:
            self._after(committed=False)
            raise
        self._after(committed=True)
        return result

    def abandon(self, error: SaveAbandoned, grace: float = COMMIT_GRACE) -> str:
        """Abandon the save unless it committed; returns the state it ends in.

        :attr:`ABANDONED`: it can no longer commit (its uploads stop, its manifest is never
        written).  :attr:`COMMITTED`: it had committed already.  :attr:`COMMITTING`: its
        manifest write was still in flight after ``grace`` seconds (it may commit)."""
        if not self._lock.acquire(timeout=grace):
            return self.COMMITTING
        try:
            if self.state != self.COMMITTED:
                self.state, self._error = self.ABANDONED, error
            return self.state
        finally:
            self._lock.release()

    def _progress(self, nbytes: int) -> None:
        if self.state == self.ABANDONED:
            assert self._error is not None
            raise self._error

    def _before_commit(self, candidate: Any, reuse: Optional[Callable[[Any], Optional[Any]]]):
        if self.state == self.ABANDONED:  # the caller's check may read the store: not after
            raise self._abandoned()
        if reuse is not None:
            existing = reuse(candidate)
            if existing is not None:
                return existing  # nothing is written
        self._lock.acquire()
        if self.state == self.ABANDONED:
            self._lock.release()
            raise self._abandoned()
        self.state = self.COMMITTING  # the lock is held until the save returns (_after)
        return None

    def _abandoned(self) -> SaveAbandoned:
        assert self._error is not None
        return self._error

    def _after(self, committed: bool) -> None:
        if self.state == self.COMMITTING:
            self.state = self.COMMITTED if committed else self.OPEN
            self._lock.release()
