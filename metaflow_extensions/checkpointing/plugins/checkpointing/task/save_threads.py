"""Daemon threads that run blocking saves, kept for the next save once one ends.

:meth:`.Interrupts.run` hands each blocking save to a worker thread so that the task's thread
can stop waiting at a signal's deadline.  Starting a thread per save cost ~90 us of each save
(a 4 KiB save takes ~1 ms in a task); an idle worker takes a save in ~45 us.  A new worker is
started only when none is idle (an abandoned save still running in its worker, or saves from
several threads at once).  A worker is named :data:`BUSY` while it runs a save.  Workers are
daemons, as the per-save threads were: an abandoned save never keeps the process alive.  A
forked child starts with none (its parent's threads do not exist there).  The threads are
:class:`..core.idle_threads.IdleThreads`.
"""

from __future__ import annotations

from ..core.idle_threads import IdleThreads

#: A worker's name while it runs a save, and while it waits for the next one.
BUSY, IDLE = "checkpoint-save", "checkpoint-save-idle"

_threads = IdleThreads(BUSY, IDLE)

#: ``start(job)``: run ``job()`` in an idle worker thread, or in a new one if none is idle.
#: ``job`` must not raise (its caller's wrapper records the outcome).
start = _threads.start
