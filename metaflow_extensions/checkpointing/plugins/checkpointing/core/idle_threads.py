"""Daemon threads kept, once their job is done, for the next job.

Starting a thread costs ~50-100 us, and handing work to a new one as much again: a transfer of
4 blobs spent ~0.45 ms of a 30 ms load starting and joining its pool, 64 blobs ~3 ms.  An idle
thread takes a job in ~20 us.  :class:`IdleThreads` runs each job in an idle thread of its own,
or in a new one when none is idle, so a job never waits for another (jobs that start jobs, or
a job abandoned while it runs, never starve the rest).  At most :attr:`IdleThreads.keep`
threads stay idle; the others end.  Threads are daemons: an idle or abandoned one never keeps
the process alive.  A forked child starts with none (its parent's threads do not exist there).
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from typing import Callable

#: Every pool, for the reset in a forked child.
_pools: weakref.WeakSet = weakref.WeakSet()


class IdleThreads:
    """A set of reusable daemon threads.

    Parameters
    ----------
    busy, idle : str
        A thread's name while it runs a job, and while it waits for the next one.
    keep : int
        Most threads left waiting; one that finishes a job when ``keep`` are idle ends.
    """

    def __init__(self, busy: str, idle: str, keep: int = 64):
        self.busy, self.idle, self.keep = busy, idle, keep
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []
        _pools.add(self)

    def start(self, job: Callable[[], None]) -> None:
        """Run ``job()`` in an idle thread, or in a new one if none is idle.

        ``job`` must not raise (its caller's wrapper records the outcome): an exception would
        end the thread, which is then replaced by the next :meth:`start`.

        Raises
        ------
        RuntimeError
            No idle thread and no new one to be had (a limit on threads or memory); ``job``
            will not run.
        """
        with self._lock:
            jobs = self._idle.pop() if self._idle else None
        if jobs is not None:
            jobs.put(job)
            return
        jobs = queue.SimpleQueue()
        # The job is queued before the thread starts: an interrupt in ``Thread.start`` (which
        # waits for the thread) must not leave a started thread waiting on an empty queue.
        jobs.put(job)
        threading.Thread(target=self._work, args=(jobs,), name=self.idle, daemon=True).start()

    def _work(self, jobs: queue.SimpleQueue) -> None:
        me = threading.current_thread()
        while True:
            job = jobs.get()
            me.name = self.busy
            job()
            job = None  # not kept alive while idle (a job may hold buffers)
            with self._lock:
                if len(self._idle) >= self.keep:
                    return
                me.name = self.idle  # named idle once it can be given a job, not before
                self._idle.append(jobs)

    def _reset_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held by one of its threads
        self._idle.clear()


def _reset_in_child() -> None:
    for pool in list(_pools):
        pool._reset_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
