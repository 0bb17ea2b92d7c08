"""A garbage collection's run record ``gc/runs/<run>/`` and its heartbeat (see :mod:`.gc`).

The record tells writers that a collection is running and in which phase (:mod:`.leases`); its
mtime in a listing is the run's "now" (the store's clock).  While the run lives a thread
rewrites it every :data:`.leases.HEARTBEAT_SECONDS`; the run deletes only while its last
successful heartbeat is fresh, so writers that see it stop changing may stop waiting for it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from typing import Callable, Optional

from ..errors import CheckpointConfigError, StorageError
from ..storage.base import Storage
from . import leases as ls
from .layout import GC_RUNS_PREFIX, gc_run_key

#: A run record dated more than this after the store's time is judged by change, not by age.
FUTURE_SLACK = 5.0


class Run:
    """This collection's record under ``gc/runs/<run>/`` and its heartbeat."""

    def __init__(self, storage: Storage, log: Callable[[str], None]):
        self.storage = storage
        self.log = log
        self.id = "%013d-%s" % (int(time.time() * 1000), uuid.uuid4().hex[:8])
        self.phase = ls.RUN_START
        self.body = json.dumps(
            {"run": self.id, "host": socket.gethostname(), "pid": os.getpid()}
        ).encode()
        self.last_ok = -math.inf
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def begin(self) -> tuple[float, dict]:
        """Write the record; return the store's "now" and the other runs recorded.

        Raises
        ------
        CheckpointConfigError
            Another collection is running (two would race on the same blobs), or the store
            gives no modification times (leases and grace periods could not be judged).
        """
        self._beat(raise_errors=True)
        runs = ls.list_runs(self.storage)
        me = runs.pop(self.id, None)
        if me is None or me.newest is None:
            self.finish({"state": "refused"})
            raise CheckpointConfigError(
                "%s does not report modification times, so garbage collection cannot tell how "
                "old blobs and leases are; it is not supported on this store." % self.storage.url
            )
        now = me.newest
        runs = self._judge_future(runs, now)
        for other in runs.values():
            if other.phase != ls.RUN_DONE and (
                other.newest is None or other.newest >= now - ls.DEAD_SECONDS
            ):
                self.finish({"state": "refused", "because": other.run})
                raise CheckpointConfigError(
                    "Another garbage collection is running on %s (%s, last heartbeat %.0f s "
                    "ago): only one may run at a time. Run gc again once it has finished (a "
                    "collection that died is ignored %d s after its last heartbeat)."
                    % (
                        self.storage.url,
                        GC_RUNS_PREFIX + other.run,
                        now - (other.newest if other.newest is not None else now),
                        ls.DEAD_SECONDS,
                    )
                )
        self._thread = threading.Thread(target=self._loop, name="mfckpt-gc-heartbeat", daemon=True)
        self._thread.start()
        return now, runs

    def _judge_future(self, runs: dict, now: float) -> dict:
        """Judge unfinished runs whose record is dated after the store's "now" by change alone.

        A record from the future (a host whose clock runs ahead on a shared filesystem, or one
        written by hand) cannot be aged against our clock: it would block every collection
        until that date.  It is alive only if it changes within :data:`.leases.DEAD_SECONDS`
        (a running collection rewrites it every :data:`.leases.HEARTBEAT_SECONDS`); one that
        does not is dead and recorded as done, so that writers stop waiting for it too.
        """
        future = {
            r: st.newest
            for r, st in runs.items()
            if st.phase != ls.RUN_DONE and st.newest is not None and st.newest > now + FUTURE_SLACK
        }
        if not future:
            return runs
        self.log(
            "GC run record(s) %s are dated after this store's time; watching them for %d s to "
            "tell whether they are alive." % (", ".join(sorted(future)), ls.DEAD_SECONDS)
        )
        deadline = ls.elapsed_clock() + ls.DEAD_SECONDS
        while future and ls.elapsed_clock() < deadline:
            self._stop.wait(min(ls.HEARTBEAT_SECONDS / 2, max(0.0, deadline - ls.elapsed_clock())))
            self._beat()
            runs = ls.list_runs(self.storage)
            runs.pop(self.id, None)
            for r in list(future):
                st = runs.get(r)
                if st is None or st.phase == ls.RUN_DONE or st.newest != future[r]:
                    future.pop(r)  # ended, or alive: judged as usual below
        for r in future:
            self.storage.put_bytes(gc_run_key(r, ls.RUN_DONE), b'{"state": "dead"}')
            runs[r] = replace(runs[r], phase=ls.RUN_DONE)
        return runs

    def enter(self, phase: str) -> None:
        """Record a new phase (synchronously: the caller acts on it being stored)."""
        self.phase = phase
        self._beat(raise_errors=True)

    def check_fresh(self) -> None:
        """Raise unless the last heartbeat is recent: writers must not see this run as dead
        (and stop waiting for it) while it still deletes."""
        age = ls.elapsed_clock() - self.last_ok
        if age > ls.STALE_SECONDS:
            raise StorageError(
                "Garbage collection stopped deleting: its run record %s could not be rewritten "
                "for %.0f s (the store is unreachable or this process was paused), so saves may "
                "no longer wait for it. Run gc again." % (self._key(self.phase), age)
            )

    def finish(self, body: dict) -> None:
        """Stop the heartbeat and record the end; best effort (a run whose record stops
        changing is dead to writers after :data:`.leases.DEAD_SECONDS` anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.storage.put_bytes(self._key(ls.RUN_DONE), json.dumps(body).encode())
            self.storage.delete_many([self._key(ls.RUN_START), self._key(ls.RUN_SWEEP)])
        except Exception as exc:  # noqa: BLE001 - reported, the collection itself is over
            self.log("Could not record the end of GC run %s: %s" % (self.id, exc))

    def _key(self, phase: str) -> str:
        return gc_run_key(self.id, phase)

    def _beat(self, raise_errors: bool = False) -> None:
        issued = ls.elapsed_clock()
        try:
            self.storage.put_bytes(self._key(self.phase), self.body)
        except Exception:
            if raise_errors:
                raise
            return
        self.last_ok = max(self.last_ok, issued)

    def _loop(self) -> None:
        while not self._stop.wait(ls.HEARTBEAT_SECONDS):
            self._beat()
