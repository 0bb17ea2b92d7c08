"""Daemon threads that run blocking saves, kept for the next save once one ends.

:meth:`.Interrupts.run` hands each blocking save to a worker thread so that the task's thread
can stop waiting at a signal's deadline.  Starting a thread per save cost ~90 us of each save
(a 4 KiB save takes ~1 ms in a task); an idle worker takes a save in ~45 us.  A new worker is
started only when none is idle (an abandoned save still running in its worker, or saves from
several threads at once).  A worker is named :data:`BUSY` while it runs a save.  Workers are
daemons, as the per-save threads were: an abandoned save never keeps the process alive.  A
forked child starts with none (its parent's threads do not exist there).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable

_lock = threading.Lock()
#: The queues of idle workers, each waiting for its next job.
_idle: list[queue.SimpleQueue] = []


def start(job: Callable[[], None]) -> None:
    """Run ``job()`` in an idle worker thread, or in a new one if none is idle.

    ``job`` must not raise (its caller's wrapper records the outcome): an exception would end
    the worker, which is then replaced by the next :func:`start`.
    """
    with _lock:
        jobs = _idle.pop() if _idle else None
    if jobs is None:
        jobs = queue.SimpleQueue()
        threading.Thread(target=_work, args=(jobs,), name=IDLE, daemon=True).start()
    jobs.put(job)


#: A worker's name while it runs a save, and while it waits for the next one.
BUSY, IDLE = "checkpoint-save", "checkpoint-save-idle"


def _work(jobs: queue.SimpleQueue) -> None:
    me = threading.current_thread()
    while True:
        job = jobs.get()
        me.name = BUSY
        job()
        me.name = IDLE
        with _lock:
            _idle.append(jobs)


def _reset_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by one of its threads
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
