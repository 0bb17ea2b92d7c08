"""Background saves: ``current.checkpoint.save(..., blocking=False)``.

``save`` snapshots the files (an in-kernel copy into a staging directory beside the checkpoint
directory) and returns a :class:`SaveHandle`; one worker thread then hashes, uploads and commits
the snapshots in the order they were taken.  The staged bytes are bounded by a budget: a save
that would exceed it waits for earlier ones first.  The task waits for every pending save before
it finishes, and a failed one fails the task.

After a signal the wait is bounded (:meth:`BackgroundSaver.wait_all` with a deadline): the
saves not committed by then are abandoned.  The one being committed is stopped through its
:class:`~.fence.Fence` (it can no longer write its manifest), the queued ones are never
started, and their snapshots are removed at once (the exiting process must not leak them).
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..common.reference import CheckpointReference
from ..core.scan import scan
from ..core.tempnames import SNAPSHOT_PREFIX
from ..errors import CheckpointException
from .fence import COMMIT_GRACE, Fence, SaveAbandoned

#: Seconds between two looks at the deadline while waiting for a background save.
_TICK = 0.05


class SaveHandle:
    """The outcome of a background save, available once it is committed (or has failed)."""

    def __init__(self, description: str):
        self.description = description
        self._event = threading.Event()
        self._reference: Optional[CheckpointReference] = None
        self._error: Optional[BaseException] = None

    def done(self) -> bool:
        """True once the save is committed or has failed."""
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> CheckpointReference:
        """Block until committed and return the reference.

        Raises
        ------
        TimeoutError
            Still running after ``timeout`` seconds.
        CheckpointException
            The save failed (the original error, or one wrapping it).
        """
        if not self._event.wait(timeout):
            raise TimeoutError("%s is still running after %s s." % (self.description, timeout))
        if self._error is not None:
            raise self._error
        assert self._reference is not None
        return self._reference

    def exception(self) -> Optional[BaseException]:
        """The error of a finished, failed save (None while running or if it succeeded)."""
        return self._error if self._event.is_set() else None

    @property
    def reference(self) -> Optional[CheckpointReference]:
        """The committed checkpoint's reference, or None while running or after a failure."""
        return self._reference

    def _finish(self, reference=None, error=None) -> None:
        # The first outcome stands: a save abandoned by the flush is not finished again by the
        # worker thread when its commit later stops.
        if self._event.is_set():
            return
        self._reference, self._error = reference, error
        self._event.set()

    def __reduce__(self):
        # Stored as an artifact (`self.ckpt = save(..., blocking=False)`), a handle becomes the
        # reference it produced: the task waits for every save before persisting artifacts.
        # A failed save fails the task anyway; its handle pickles as None.
        if self.done() and self._reference is not None:
            return (CheckpointReference, (dict(self._reference),))
        return (type(None), ())

    def __repr__(self) -> str:
        state = "running" if not self.done() else ("failed" if self._error else "committed")
        return "SaveHandle(%s, %s)" % (self.description, state)


def source_bytes(path: str, exclude: frozenset[str] = frozenset()) -> int:
    """Bytes of the regular files under ``path`` (a file or directory; 0 if it is missing),
    but for the names ``exclude`` at its top (as :func:`snapshot` skips them)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if exclude and dirpath == path:
            dirnames[:] = [d for d in dirnames if d not in exclude]
            filenames = [f for f in filenames if f not in exclude]
        for filename in filenames:
            try:
                total += os.path.getsize(os.path.join(dirpath, filename))
            except OSError:
                pass  # vanished or unreadable: the save itself reports it
    return total


def snapshot(
    src: str, staging_parent: Optional[str], exclude: frozenset[str] = frozenset()
) -> tuple[str, str, int]:
    """Copy ``src`` (file or directory, with save()'s rules for links) into a new staging dir.

    Returns ``(staging dir, path to save inside it, bytes copied)``.  Copies go through the
    kernel (``shutil.copy`` uses ``sendfile``/``copy_file_range``), mode bits are kept.
    ``exclude``: names at the top of a directory ``src`` not to copy (a ``Prepare`` of the save
    writes those into the snapshot itself).
    """
    files, dirs, kind = scan(src)
    if exclude and kind == "dir":
        files = [f for f in files if f.rel.split("/", 1)[0] not in exclude]
        dirs = [d for d in dirs if d.split("/", 1)[0] not in exclude]
    staging = tempfile.mkdtemp(prefix=SNAPSHOT_PREFIX, dir=staging_parent)
    try:
        if kind == "file":
            target = os.path.join(staging, files[0].rel)
            shutil.copy(files[0].abs, target)
            return staging, target, files[0].size
        root = os.path.join(staging, os.path.basename(os.path.abspath(src)) or "checkpoint")
        os.makedirs(root)
        for d in dirs:
            os.makedirs(os.path.join(root, *d.split("/")), exist_ok=True)
        made = set()
        for f in files:
            target = os.path.join(root, *f.rel.split("/"))
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            shutil.copy(f.abs, target)
        return staging, root, sum(f.size for f in files)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class BackgroundSaver:
    """One worker thread committing snapshots in order, within a budget of staged bytes."""

    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[SaveHandle] = []
        self._staged = 0
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        # After a signal's deadline: the error of a save not committed yet, by description.
        self._abandoned: Optional[Callable[[str, bool], SaveAbandoned]] = None
        self._current: Optional[tuple[SaveHandle, Fence, str]] = None  # being committed

    def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more staged bytes fit the budget (always fits when idle)."""
        with self._cond:
            while self._staged and self._staged + nbytes > self.budget:
                self._cond.wait()
            self._staged += nbytes

    def adjust(self, delta: int) -> None:
        """Correct the staged byte count without waiting (e.g. files changed size)."""
        with self._cond:
            self._staged += delta
            self._cond.notify_all()

    def submit(
        self,
        description: str,
        staging: str,
        nbytes: int,
        commit: Callable[[], CheckpointReference],
        fence: Optional[Fence] = None,
    ) -> SaveHandle:
        """Queue ``commit()`` (which saves from ``staging``); ``staging`` is removed after.

        ``fence`` is the one ``commit`` saves through (:meth:`.fence.Fence.commit`): after a
        signal's deadline, :meth:`abandon` stops that save through it."""
        handle = SaveHandle(description)
        with self._cond:
            self._pending.append(handle)
        self._queue.put((handle, staging, nbytes, commit, fence or Fence()))
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="checkpoint-background-save", daemon=True
            )
            self._thread.start()
        return handle

    def _work(self) -> None:
        while True:
            handle, staging, nbytes, commit, fence = self._queue.get()
            reference, error = None, None
            with self._cond:
                abandoned = self._abandoned
                self._current = None if abandoned else (handle, fence, staging)
            try:
                if abandoned is not None:
                    raise abandoned(handle.description, False)  # after the deadline: not started
                reference = commit()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                error = exc
            finally:
                # Removed before the handle is finished: once flush() returns the task may end
                # and exit, and this daemon thread with it, leaking the snapshot.
                shutil.rmtree(staging, ignore_errors=True)
                with self._cond:
                    self._current = None
                    self._staged -= nbytes
                    self._cond.notify_all()
            handle._finish(reference=reference, error=error)

    def pending(self) -> list[SaveHandle]:
        """Saves not finished yet (finished ones stay tracked until :meth:`wait_all`, so a
        failure is still reported there)."""
        with self._cond:
            return [h for h in self._pending if not h.done()]

    def wait_all(
        self,
        deadline: Callable[[], Optional[float]] = lambda: None,
        abandoned: Optional[Callable[[str, bool], SaveAbandoned]] = None,
    ) -> list[tuple[SaveHandle, BaseException]]:
        """Wait for every queued save; return the failed ones with their errors.

        ``deadline()`` is ``time.monotonic()`` at which to stop waiting, or None (looked at
        again while waiting: a signal may set it).  Saves not committed by then are abandoned
        (:meth:`abandon`) with the error ``abandoned(description, may_have_committed)`` and
        returned among the failed ones.

        Handles stay pending until this has every outcome: a signal handled during the wait
        (in this thread) flushes too, and that bounded flush must still see every save, the
        unfinished ones to commit or abandon them and the finished ones to report their
        failures (the interrupted wait never resumes, so what it collected would be lost)."""
        with self._cond:
            handles = list(self._pending)
        for h in handles:
            while not h._event.wait(_TICK):
                end = deadline()
                if end is not None and time.monotonic() >= end:
                    assert abandoned is not None
                    self.abandon(abandoned)
                    break
        with self._cond:
            # Those still pending are ours to report (a nested flush reported the others).
            ours = [h for h in handles if h in self._pending]
            self._pending = [h for h in self._pending if h not in ours]
        return [(h, h.exception()) for h in ours if h.exception() is not None]

    def abandon(self, abandoned: Callable[[str, bool], SaveAbandoned]) -> None:
        """Abandon every save not committed yet (the time allowed after a signal ran out).

        The one being committed is stopped through its fence (unless it committed already:
        then it finishes normally), the queued ones end with the error without starting, and
        every snapshot of an abandoned save is removed now.  Each handle is finished before
        this returns."""
        with self._cond:
            self._abandoned = abandoned
            current = self._current
        queued = []
        while True:
            try:
                queued.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for handle, staging, nbytes, _, _ in queued:
            shutil.rmtree(staging, ignore_errors=True)
            with self._cond:
                self._staged -= nbytes
                self._cond.notify_all()
            handle._finish(error=abandoned(handle.description, False))
        if current is None:
            return
        handle, fence, staging = current
        state = fence.abandon(abandoned(handle.description, False))
        if state == Fence.COMMITTED:
            # What is left is the bookkeeping, then the retention prune (a listing and
            # deletes): not waited for past the deadline; the snapshot is no longer needed.
            if not handle._event.wait(COMMIT_GRACE):
                published, reference = fence.result(COMMIT_GRACE)
                shutil.rmtree(staging, ignore_errors=True)
                if published:
                    handle._finish(reference=reference)
                else:
                    handle._finish(error=abandoned(handle.description, True))
            return
        # Its uploads stop at their next chunk; the files they read may go now.
        shutil.rmtree(staging, ignore_errors=True)
        handle._finish(error=abandoned(handle.description, state == Fence.COMMITTING))


@dataclass(frozen=True)
class FailedSave:
    """One background save that failed: which save, and its error (as text, so the error
    that carries it always pickles)."""

    save: str  #: the save, e.g. ``save of /tmp/ckpt ('mfchckpt')``
    error_type: str  #: the error's class name, e.g. ``StorageError``
    message: str  #: the error's message


def failure(failed: list[tuple[SaveHandle, BaseException]]) -> CheckpointException:
    """One error naming every failed background save and its error, in the order they were
    made; its ``failures`` attribute lists them as :class:`FailedSave` records."""
    failures = [
        FailedSave(
            handle.description, type(exc).__name__, getattr(exc, "message", None) or str(exc)
        )
        for handle, exc in failed
    ]
    error = CheckpointException(
        "%d background checkpoint save(s) failed: %s"
        % (len(failures), "; ".join("%s: %s" % (f.save, f.message) for f in failures))
    )
    error.failures = failures
    return error
