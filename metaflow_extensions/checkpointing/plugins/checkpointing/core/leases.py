"""Leases: how a save keeps garbage collection away from the blobs it relies on.

Garbage collection deletes blobs no committed checkpoint references.  A save in flight relies on
blobs that no manifest references yet: the ones it uploaded, and the ones it found already stored
and deduplicated against (possibly old blobs whose checkpoints retention has pruned).  The
protocol below makes GC keep both, whatever the interleaving; the argument is in
``docs/design/adr-002-gc-liveness.md``.

Objects (all under the checkpoint root; keys built by :mod:`.layout`)::

    leases/<session>/start       a writer session began (server mtime = the session's start)
    leases/<session>/alive       rewritten to refresh the lease (mtime = last refresh)
    leases/<session>/names-<n>   blobs the session relies on without having uploaded them
    gc/runs/<run>/start          a GC run began (mtime = GC's "now"); rewritten as a heartbeat
    gc/runs/<run>/sweep          the run is about to read leases (then heartbeats go here)
    gc/runs/<run>/done           the run ended (its deletions are over)

Each side writes its own flag, then reads the other's (Dekker): a writer puts ``names-<n>`` and
then lists ``gc/runs/``; GC puts ``sweep`` and then lists ``leases/``.  With a strongly
consistent store at least one sees the other: either GC keeps the named blobs, or the writer sees
a run that may have missed them, waits for it to end and checks (and re-uploads) what it needs.
Blobs a session uploaded itself after its ``start`` are protected by time: GC keeps every blob
whose mtime is at least a live lease's start (minus :data:`MARGIN_SECONDS`).

This module owns the protocol's objects (what they hold and when they are written), the writer side
(:class:`WriterLease`, used by :func:`.commit.save` through :class:`.upload.BlobWriter`) and
:func:`list_leases` (used by :mod:`.gc` and :mod:`.verify`).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import CheckpointConfigError, StorageError, StorageNotFound
from ..storage.base import ObjectInfo, Storage
from .layout import (
    GC_RUNS_PREFIX,
    LEASE_ALIVE,
    LEASE_NAMES,
    LEASE_START,
    LEASES_PREFIX,
    gc_run_of,
    lease_key,
    lease_names_key,
    lease_of,
    lease_prefix,
)

#: Lease lifetime (seconds) when ``METAFLOW_CHECKPOINT_LEASE_SECONDS`` is not set.
DEFAULT_TTL_SECONDS = 1800.0
#: Longest lease lifetime a writer may declare: a crashed writer's lease never blocks GC longer.
MAX_TTL_SECONDS = 86400.0
#: GC keeps blobs up to this much older than a live lease's start (coarse or truncated
#: timestamps: S3 listings give whole seconds).
MARGIN_SECONDS = 1.0
#: A GC run rewrites its record this often while it runs.
HEARTBEAT_SECONDS = 10.0
#: A GC run deletes nothing once its last successful heartbeat is older than this.
STALE_SECONDS = 30.0
#: A GC run whose record has not changed for this long is dead (writers stop waiting for it).
DEAD_SECONDS = 60.0
#: Records of finished GC runs are kept this long (a save that started before a run must still
#: see that the run happened), then deleted by a later run.
RUN_RECORD_SECONDS = 7 * 86400.0

START = LEASE_START
ALIVE = LEASE_ALIVE
NAMES = LEASE_NAMES
#: Phases of a GC run, in order; each is one object ``gc/runs/<run>/<phase>``.
RUN_START, RUN_SWEEP, RUN_DONE = "start", "sweep", "done"
_PHASE_ORDER = {RUN_START: 0, RUN_SWEEP: 1, RUN_DONE: 2}
_HASH_RE = re.compile(r"^[0-9a-f]{16,128}$")


def validate_ttl(value: object, what: str = "METAFLOW_CHECKPOINT_LEASE_SECONDS") -> float:
    """A lease lifetime in seconds: a finite number in (0, :data:`MAX_TTL_SECONDS`].

    Raises
    ------
    CheckpointConfigError
        Naming ``what`` and the value.
    """
    try:
        ttl = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ttl = math.nan
    if isinstance(value, bool) or not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise CheckpointConfigError(
            "%s=%r is not a valid lease lifetime: give a number of seconds greater than 0 and at "
            "most %d (default %d)." % (what, value, MAX_TTL_SECONDS, DEFAULT_TTL_SECONDS)
        )
    return ttl


# ------------------------------------------------------------------------------------ GC runs
@dataclass(frozen=True)
class RunState:
    """What a listing of ``gc/runs/`` says about one GC run.

    ``phase`` is the most advanced phase object present (an unknown phase counts as ``done``:
    it is not a run still reading leases); ``newest`` the newest mtime of its objects (its last
    heartbeat while it runs).
    """

    run: str
    phase: str
    newest: Optional[float]
    keys: tuple[str, ...]
    started: Optional[float] = None


def parse_runs(objects: Iterable[ObjectInfo]) -> dict[str, RunState]:
    """Group a listing of ``gc/runs/`` by run."""
    grouped: dict[str, list[ObjectInfo]] = {}
    for o in objects:
        parsed = gc_run_of(o.key)
        if parsed is not None:
            grouped.setdefault(parsed[0], []).append(o)
    out = {}
    for run, objs in grouped.items():
        phases = {gc_run_of(o.key)[1]: o for o in objs}  # type: ignore[index]
        known = [p for p in phases if p in _PHASE_ORDER]
        if any(p not in _PHASE_ORDER for p in phases):
            phase = RUN_DONE
        else:
            phase = max(known, key=_PHASE_ORDER.__getitem__)
        mtimes = [o.mtime for o in objs if o.mtime is not None]
        start = phases.get(RUN_START)
        out[run] = RunState(
            run=run,
            phase=phase,
            newest=max(mtimes) if mtimes else None,
            keys=tuple(sorted(o.key for o in objs)),
            started=start.mtime if start is not None else None,
        )
    return out


def list_runs(storage: Storage) -> dict[str, RunState]:
    """Every GC run recorded under ``gc/runs/`` (a listing error propagates: fail closed)."""
    return parse_runs(storage.list(GC_RUNS_PREFIX))


# ------------------------------------------------------------------------------------ leases
@dataclass(frozen=True)
class LeaseInfo:
    """One writer session's lease as stored.

    Attributes
    ----------
    session : str
        The session id (``leases/<session>/``).
    keys : tuple of str
        Its objects' keys.
    started : float, optional
        Server mtime of its ``start`` object (None: no ``start``, the lease cannot be judged by
        time and protects every blob while it is live).
    refreshed : float, optional
        Newest server mtime of its objects (its last sign of life).
    names : frozenset of str
        Blob hashes it names (relies on without having uploaded them).
    expired : bool
        Its last refresh is at least ``ttl`` old, or it was removed while being read.
    ttl : float
        The lifetime it was judged with (its own declaration unless overridden).
    unreadable : tuple of str
        Keys whose content could not be parsed (a ``names-*`` one makes GC stop).
    unknown : tuple of str
        Keys this release does not know (the lease then protects every blob while live).
    """

    session: str
    keys: tuple[str, ...]
    started: Optional[float]
    refreshed: Optional[float]
    names: frozenset
    expired: bool
    ttl: float = DEFAULT_TTL_SECONDS
    unreadable: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def protects_everything(self) -> bool:
        """True when GC cannot tell which blobs this (live) lease protects."""
        return self.started is None or bool(self.unknown)

    def protects(self, blob: str, mtime: Optional[float]) -> bool:
        """Whether this lease, if live, keeps the blob ``blob`` stored with ``mtime``."""
        if self.expired:
            return False
        if self.protects_everything or blob in self.names:
            return True
        # An unknown mtime cannot be shown to be older than the session.
        return mtime is None or mtime >= self.started - MARGIN_SECONDS  # type: ignore[operator]


def _loads(data: bytes) -> object:
    return json.loads(data.decode("utf-8"))


def parse_names(data: bytes) -> frozenset:
    """The blob hashes of one ``names-<n>`` object.

    Raises
    ------
    ValueError
        If it is not ``{"blobs": [<hex hash>, ...]}``.
    """
    doc = _loads(data)
    blobs = doc.get("blobs") if isinstance(doc, dict) else None
    if not isinstance(blobs, list) or not all(
        isinstance(b, str) and _HASH_RE.fullmatch(b) for b in blobs
    ):
        raise ValueError('expected {"blobs": [hex hashes]}')
    return frozenset(blobs)


def _declared_ttl(data: bytes) -> float:
    doc = _loads(data)
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return validate_ttl(doc.get("ttl"), "ttl")


def list_leases(
    storage: Storage,
    ttl_seconds: Optional[float] = None,
    now: Optional[float] = None,
    *,
    read_names: str = "all",
    workers: int = 8,
) -> list[LeaseInfo]:
    """Every lease stored under ``leases/``, sorted by session.

    Parameters
    ----------
    storage : Storage
        The checkpoint root.
    ttl_seconds : float, optional
        Judge every lease with this lifetime; default: the lifetime each lease declared in its
        ``start`` object (:data:`MAX_TTL_SECONDS` when that cannot be read: kept longest).
    now : float, optional
        The time to judge expiry against (default: this machine's clock; GC passes the store's
        own time).
    read_names : {"all", "live", "none"}
        Which leases' ``names-*`` objects to read.
    workers : int
        Parallel reads.

    Raises
    ------
    StorageError
        ``leases/`` cannot be listed, or an object cannot be read (other than having been
        deleted since the listing).  Damaged objects are reported in ``unreadable``, not raised.
    """
    if read_names not in ("all", "live", "none"):
        raise ValueError("read_names must be 'all', 'live' or 'none'")
    if ttl_seconds is not None:
        ttl_seconds = validate_ttl(ttl_seconds, "ttl_seconds")
    now = time.time() if now is None else float(now)
    groups: dict[str, list[ObjectInfo]] = {}
    for o in storage.list(LEASES_PREFIX):
        parsed = lease_of(o.key)
        if parsed is not None:
            groups.setdefault(parsed[0], []).append(o)

    def judge(session: str) -> LeaseInfo:
        objs = groups[session]
        by_name = {lease_of(o.key)[1]: o for o in objs}  # type: ignore[index]
        unknown = tuple(
            sorted(
                o.key
                for n, o in by_name.items()
                if n not in (START, ALIVE) and not (n.startswith(NAMES) and "/" not in n)
            )
        )
        start = by_name.get(START)
        unreadable: list[str] = []
        ended = False
        ttl = ttl_seconds
        if start is not None:
            try:
                declared = _declared_ttl(storage.get_bytes(start.key))
            except StorageNotFound:
                ended = True  # removed since the listing: the session has ended
                declared = MAX_TTL_SECONDS
            except (ValueError, UnicodeDecodeError, CheckpointConfigError):
                unreadable.append(start.key)
                declared = MAX_TTL_SECONDS
            ttl = declared if ttl is None else ttl
        ttl = MAX_TTL_SECONDS if ttl is None else ttl
        mtimes = [o.mtime for o in objs if o.mtime is not None]
        refreshed = max(mtimes) if mtimes else None
        expired = ended or (refreshed is not None and refreshed + ttl <= now)
        return LeaseInfo(
            session=session,
            keys=tuple(sorted(o.key for o in objs)),
            started=start.mtime if start is not None and start.mtime is not None else None,
            refreshed=refreshed,
            names=frozenset(),
            expired=expired,
            ttl=ttl,
            unreadable=tuple(unreadable),
            unknown=unknown,
        )

    sessions = sorted(groups)
    leases = _parallel(judge, sessions, workers)
    if read_names == "none":
        return leases
    return _parallel(
        lambda lease: (
            lease if (read_names == "live" and lease.expired) else _with_names(storage, lease)
        ),
        leases,
        workers,
    )


def _with_names(storage: Storage, lease: LeaseInfo) -> LeaseInfo:
    """``lease`` with the hashes of its ``names-*`` objects read (deleted ones skipped)."""
    names: set = set()
    unreadable = list(lease.unreadable)
    prefix = lease_prefix(lease.session) + NAMES
    for key in lease.keys:
        if not key.startswith(prefix) or key in lease.unknown:
            continue
        try:
            names |= parse_names(storage.get_bytes(key))
        except StorageNotFound:
            continue  # the session ended meanwhile: it relies on nothing any more
        except (ValueError, UnicodeDecodeError):
            unreadable.append(key)
    return replace(lease, names=frozenset(names), unreadable=tuple(sorted(unreadable)))


def _parallel(fn, items: list, workers: int) -> list:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        return list(pool.map(fn, items))


# ------------------------------------------------------------------------------ writer side
def elapsed_clock() -> float:
    """Seconds on a clock that never steps and keeps counting while the machine sleeps
    (``CLOCK_BOOTTIME`` where it exists): lease and heartbeat ages must include a suspend."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


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
            if _PHASE_ORDER.get(old.get(run, RUN_START), 2) > _PHASE_ORDER.get(phase, 2):
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


def delete_lease_objects(
    storage: Storage,
    keys: Iterable[str],
    delete: Optional[Callable[[Storage, list[str]], None]] = None,
) -> None:
    """Remove lease objects, every ``start`` last: a lease left without its ``start`` cannot be
    dated and would keep every blob while it lives."""
    delete = delete or (lambda st, ks: st.delete_many(ks))
    keys = list(keys)
    delete(storage, [k for k in keys if not k.endswith("/" + START)])
    delete(storage, [k for k in keys if k.endswith("/" + START)])


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
