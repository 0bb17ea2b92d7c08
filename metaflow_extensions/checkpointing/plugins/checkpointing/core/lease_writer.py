"""The writer side of the lease protocol (:mod:`.leases`), used by :func:`.commit.save` through
:class:`.upload.BlobWriter`: sessions, their refresh thread, settling before a commit, removal
at close and at process exit (a forked child starts over).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

from ..errors import StorageError
from ..storage.base import Storage
from .layout import lease_key, lease_names_key, lease_prefix
from .leases import (
    ALIVE,
    DEAD_SECONDS,
    DEFAULT_TTL_SECONDS,
    MARGIN_SECONDS,
    PHASE_ORDER,
    RUN_DONE,
    RUN_START,
    RUN_SWEEP,
    START,
    delete_lease_objects,
    elapsed_clock,
    list_runs,
    validate_ttl,
)


class _Session:
    """One lease (``leases/<id>/``) of a writer, as the writer knows it."""

    def __init__(self, sid: str, ttl: float):
        self.id = sid
        self.ttl = ttl
        #: Blobs stored by a put issued while this session was current (mtime >= start).
        self.uploaded: set[str] = set()
        #: Blobs named in a ``names-*`` object whose pre-commit check completed.
        self.named: set[str] = set()
        self.keys: list[str] = []
        self.names_n = 0
        self.clock0 = elapsed_clock()
        self.wall0 = time.time()
        #: ``elapsed_clock()`` when the last successful write of the lease was issued.
        self.refreshed = self.clock0
        self.active = 0  # saves in progress that began under this session
        #: A write of the lease came more than ``ttl/2`` after the previous one (the process
        #: was stopped or the store unreachable): GC may have judged it expired meanwhile.
        self.lapsed = False

    def since_refresh(self) -> float:
        return elapsed_clock() - self.refreshed

    def age(self) -> float:
        return elapsed_clock() - self.clock0

    def unsafe(self) -> bool:
        """The lease may have expired for GC (not refreshed for ``ttl/2``), or this machine's
        wall clock stepped back since the start (local stores date blobs with it)."""
        drift = (time.time() - self.wall0) - (elapsed_clock() - self.clock0)
        return self.lapsed or self.since_refresh() > self.ttl / 2 or drift < -MARGIN_SECONDS / 2


@dataclass
class Ticket:
    """One save's view of the lease protocol, taken when it began."""

    session: _Session
    #: Phase of every GC run known when the save began (run -> phase).
    runs: dict


class WriterLease:
    """The writer side of the protocol for one :class:`.upload.BlobWriter` (one session at a
    time; a session is rotated after ``ttl/2`` so that a long-lived process never keeps GC
    from reclaiming what was uploaded after it started).

    A save calls :meth:`begin_save`, uploads (the writer credits every blob it stores to
    :attr:`current` via :meth:`credit`), calls :meth:`settle` just before its commit (which
    returns the blobs found missing: upload them again and settle again), then
    :meth:`end_save`.  :meth:`close` removes the lease objects (also run at process exit).

    Parameters
    ----------
    storage : Storage
        The checkpoint root.
    ttl_seconds : float, optional
        Lease lifetime (default :data:`DEFAULT_TTL_SECONDS`).
    """

    def __init__(self, storage: Storage, ttl_seconds: Optional[float] = None):
        self.storage = storage
        self.ttl = validate_ttl(DEFAULT_TTL_SECONDS if ttl_seconds is None else ttl_seconds)
        self._reset()
        _OPEN.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._credit = threading.Lock()
        self._current: Optional[_Session] = None
        self._sessions: list[_Session] = []
        self._runs: Optional[dict] = None
        self._stop = threading.Event()
        self._timer: Optional[threading.Thread] = None

    # -------------------------------------------------------------- used while uploading
    @property
    def current(self) -> Optional[_Session]:
        """The session a blob stored now is credited to (None before the first save)."""
        return self._current if self._pid == os.getpid() else None

    def credit(self, session: Optional[_Session], blob: str) -> None:
        """Record that a put issued while ``session`` was current stored ``blob``."""
        if session is not None:
            with self._credit:
                session.uploaded.add(blob)

    # -------------------------------------------------------------- one save
    def begin_save(self) -> Ticket:
        """Start (first save, lapse, rotation) or refresh the session; before any upload."""
        with self._lock:
            s = self._current
            if s is None or s.unsafe() or s.age() > self.ttl / 2:
                s = self._start_session()
            elif s.since_refresh() > self.ttl / 4:
                self._refresh(s)
            with self._credit:
                s.active += 1
            self._ensure_timer()
            return Ticket(s, dict(self._runs or {}))

    def lapsed_since(self, ticket: Ticket) -> bool:
        """Whether the lease this save relied on may have expired for GC at some point (the
        process was stopped, or refreshes failed, for more than ``ttl/2``): blobs settled
        before the commit may then be gone, and the caller must check them after it."""
        with self._credit:
            sessions = {id(ticket.session): ticket.session}
            if self._current is not None:
                sessions[id(self._current)] = self._current
            return any(s.unsafe() for s in sessions.values())

    def end_save(self, ticket: Ticket) -> None:
        with self._credit:
            ticket.session.active -= 1

    def settle(
        self,
        ticket: Ticket,
        refs: Iterable[str],
        confirmed: set,
        missing_of: Callable[[list[str]], list[str]],
    ) -> list[str]:
        """Make every blob in ``refs`` safe from GC until the commit that follows.

        Blobs the current session neither uploaded nor named yet are named (one ``names-<n>``
        put), then ``gc/runs/`` is listed.  A run that may have read the leases before that put
        (it is sweeping, or ended since the save began) is waited for, then the blobs no live
        session of this writer protected are checked with ``missing_of`` (those this save did
        not itself see stored, ``confirmed``, are always checked).  Returns the ones missing:
        the caller uploads them again and calls :meth:`settle` again.  No new name: no request.
        """
        refs = set(refs)
        if not refs:
            return []
        with self._lock:
            for _ in range(3):
                s = self._current
                if s is None or s.unsafe():
                    s = self._start_session()
                elif s.since_refresh() > self.ttl / 4:
                    self._refresh(s)
                with self._credit:
                    relied = refs - s.uploaded - s.named
                    if not relied:
                        return []
                    live = [x for x in self._sessions if not x.unsafe()]
                    unprotected = {
                        h for h in relied if not any(h in x.uploaded or h in x.named for x in live)
                    }
                    s.active += 1  # keeps it refreshed while we wait
                try:
                    self._put_names(s, relied)
                    runs = list_runs(self.storage)
                    sweeping, ended = self._flagged(runs, ticket.runs)
                    if sweeping:
                        runs = self._wait(runs, sweeping, s)
                    check = unprotected if (sweeping or ended) else unprotected - confirmed
                    missing = missing_of(sorted(check)) if check else []
                finally:
                    with self._credit:
                        s.active -= 1
                self._merge_runs(runs, sweeping)
                if s.unsafe():
                    continue  # lapsed while we waited: the names may have been ignored
                with self._credit:
                    s.named |= relied - set(missing)
                return missing
            raise StorageError(
                "The lease of this process on %s could not be kept fresh while a save committed "
                "(%d tries), so garbage collection may not respect it; nothing was committed. "
                "Check that the store is reachable and retry." % (self.storage.url, 3)
            )

    # -------------------------------------------------------------- session end
    def close(self) -> None:
        """Delete the lease objects of every session no save is using (best effort)."""
        # A save waiting for a GC run holds the lock: then leave the lease to expire.
        if self._pid != os.getpid() or not self._lock.acquire(timeout=5.0):
            return
        try:
            self._stop.set()
            timer, self._timer = self._timer, None
            if timer is not None and timer is not threading.current_thread():
                timer.join(timeout=5.0)  # no refresh may land after the deletes below
            self._stop = threading.Event()
            with self._credit:
                idle = [s for s in self._sessions if s.active == 0]
                self._sessions = [s for s in self._sessions if s.active > 0]
            if self._current in idle:
                self._current = None
            if self._sessions:
                self._ensure_timer()
        finally:
            self._lock.release()
        try:
            delete_lease_objects(self.storage, [k for s in idle for k in s.keys], _delete)
        except Exception:  # noqa: BLE001 - an unremoved lease just expires
            pass

    # -------------------------------------------------------------- internals
    def _start_session(self) -> _Session:
        s = _Session(uuid.uuid4().hex, self.ttl)
        body = {"version": 1, "ttl": self.ttl, "host": socket.gethostname(), "pid": os.getpid()}
        self._write(s, lease_key(s.id, START), body)
        with self._credit:
            self._sessions.append(s)
            self._current = s
        _register_atexit()
        if self._runs is None:
            # The baseline: runs that ended before this process relied on anything.
            self._runs = {r: st.phase for r, st in list_runs(self.storage).items()}
        return s

    def _refresh(self, s: _Session) -> None:
        self._write(s, lease_key(s.id, ALIVE), {"ttl": self.ttl})

    def _put_names(self, s: _Session, blobs: set) -> None:
        key = lease_names_key(s.id, s.names_n)
        s.names_n += 1
        self._write(s, key, {"blobs": sorted(blobs)})

    def _write(self, s: _Session, key: str, body: dict) -> None:
        issued = elapsed_clock()
        self.storage.put_bytes(key, json.dumps(body).encode())
        if issued - s.refreshed > s.ttl / 2:
            s.lapsed = True  # a late refresh does not undo what GC may have done before it
        s.refreshed = max(s.refreshed, issued)
        if key not in s.keys:
            s.keys.append(key)

    @staticmethod
    def _flagged(runs: dict, known: dict) -> tuple[list[str], bool]:
        """Runs that may have read the leases before our last put: (sweeping ones, whether one
        ended or vanished since the save began)."""
        sweeping, ended = [], False
        for run, st in runs.items():
            if known.get(run) == RUN_DONE or st.phase == RUN_START:
                continue  # ended before the save began / has not read leases yet
            if st.phase == RUN_SWEEP:
                sweeping.append(run)
            else:
                ended = True
        ended = ended or any(p != RUN_DONE and r not in runs for r, p in known.items())
        return sweeping, ended

    def _wait(self, runs: dict, sweeping: list[str], s: _Session) -> dict:
        """Wait until every run in ``sweeping`` is done or dead; return the last listing."""
        pending = set(sweeping)
        seen = {r: (runs[r].newest, elapsed_clock()) for r in pending}
        server_now: Optional[float] = None
        delay = 0.02
        while True:
            for r in sorted(pending):
                st = runs.get(r)
                if st is None or st.phase != RUN_SWEEP:
                    pending.discard(r)
                    continue
                if st.newest != seen[r][0]:
                    seen[r] = (st.newest, elapsed_clock())
                elif elapsed_clock() - seen[r][1] > DEAD_SECONDS:
                    pending.discard(r)  # no heartbeat for DEAD_SECONDS: it deletes no more
                    continue
                if server_now is None:
                    # The store's time, from our names object just written: a crashed run's
                    # record from long ago is dead at once, without waiting DEAD_SECONDS.
                    mtimes = [o.mtime for o in self.storage.list(lease_prefix(s.id))]
                    server_now = max((m for m in mtimes if m is not None), default=-math.inf)
                if st.newest is not None and st.newest < server_now - DEAD_SECONDS:
                    pending.discard(r)
            if not pending:
                return runs
            time.sleep(delay)
            delay = min(1.0, delay * 2)
            runs = list_runs(self.storage)

    def _merge_runs(self, runs: dict, waited: list[str]) -> None:
        merged = {}
        old = self._runs or {}
        for run, st in runs.items():
            phase = RUN_DONE if run in waited else st.phase
            if PHASE_ORDER.get(old.get(run, RUN_START), 2) > PHASE_ORDER.get(phase, 2):
                phase = old[run]
            merged[run] = phase
        self._runs = merged

    def _ensure_timer(self) -> None:
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Thread(
                target=self._tick_loop, args=(self._stop,), name="mfckpt-lease", daemon=True
            )
            self._timer.start()

    def _tick_loop(self, stop: threading.Event) -> None:
        while not stop.wait(max(0.05, self.ttl / 8)):
            self.tick()
            # Nothing left to refresh or retire: end the thread (the next save starts another)
            # rather than keep one per store for the life of the process.
            if self._lock.acquire(blocking=False):
                try:
                    with self._credit:
                        current = self._current
                        idle = all(s.active == 0 for s in self._sessions) and (
                            self._sessions == ([current] if current is not None else [])
                        )
                    if idle and (current is None or current.age() >= self.ttl):
                        self._timer = None
                        return
                finally:
                    self._lock.release()

    def tick(self) -> None:
        """Refresh the sessions saves rely on (and the current one while it is young); retire
        rotated-away sessions that lapsed with no save using them."""
        # Not under the main lock: a save waiting for a GC run holds it, and its session must
        # stay refreshed meanwhile.
        with self._credit:
            sessions, current = list(self._sessions), self._current
            # A lapsed session protects nothing any more (settle() ignores it): forget its
            # sets and remove its objects rather than keep them for the whole process.
            retired = [s for s in sessions if s is not current and s.active == 0 and s.unsafe()]
            self._sessions = [s for s in self._sessions if s not in retired]
        due = [
            s
            for s in sessions
            if (s.active > 0 or (s is current and s.age() < self.ttl))
            and s.since_refresh() > self.ttl / 4
            and not s.unsafe()  # once unsafe, a save starts a new session instead
        ]
        for s in due:
            try:
                self._refresh(s)
            except Exception:  # noqa: BLE001 - retried next tick; settle() sees a lapse
                pass
        for s in retired:
            try:
                delete_lease_objects(self.storage, s.keys, _delete)
            except Exception:  # noqa: BLE001 - GC removes expired leases
                pass


def _delete(storage: Storage, keys: list[str]) -> None:
    try:
        storage.delete_many(keys)
    except Exception:  # noqa: BLE001 - retried below
        # At exit, thread pools refuse new work ("cannot schedule new futures after
        # interpreter shutdown"): a session has a handful of objects, delete them one by one.
        for key in keys:
            storage.delete(key)


#: Every writer lease of this process: closed at exit, reset in a forked child.
_OPEN: weakref.WeakSet = weakref.WeakSet()
_ATEXIT: list = []


def _close_all() -> None:
    for lease in list(_OPEN):
        lease.close()


def _register_atexit() -> None:
    if not _ATEXIT:
        _ATEXIT.append(True)
        atexit.register(_close_all)


def _reset_in_child() -> None:
    # A forked child is another writer: it must not refresh, use or delete its parent's lease
    # (and the parent's locks may be held by threads that do not exist here).
    for lease in list(_OPEN):
        lease._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
