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

This module owns the protocol's objects (what they hold, how they are judged) and the reading
side, :func:`list_leases` and :func:`list_runs` (used by :mod:`.gc`, :mod:`.verify` and the
writer); the writer side is :class:`.lease_writer.WriterLease`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import CheckpointConfigError, StorageNotFound
from ..storage.base import ObjectInfo, Storage
from .layout import (
    GC_RUNS_PREFIX,
    LEASE_ALIVE,
    LEASE_NAMES,
    LEASE_START,
    LEASES_PREFIX,
    gc_run_of,
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
#: Rank of each phase: the most advanced object of a run tells its phase.
PHASE_ORDER = {RUN_START: 0, RUN_SWEEP: 1, RUN_DONE: 2}
#: A blob named by a lease: a stored name (a digest, ``.zst`` when stored compressed).
_HASH_RE = re.compile(r"^[0-9a-f]{16,128}(?:\.zst)?$")


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
        known = [p for p in phases if p in PHASE_ORDER]
        if any(p not in PHASE_ORDER for p in phases):
            phase = RUN_DONE
        else:
            phase = max(known, key=PHASE_ORDER.__getitem__)
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


# ------------------------------------------------------------------------------------ clock
def elapsed_clock() -> float:
    """Seconds on a clock that never steps and keeps counting while the machine sleeps
    (``CLOCK_BOOTTIME`` where it exists): lease and heartbeat ages must include a suspend."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def delete_lease_objects(
    storage: Storage,
    keys: Iterable[str],
    delete: Optional[Callable[[Storage, list[str]], None]] = None,
) -> None:
    """Remove lease objects, every ``start`` last: a lease left without its ``start`` cannot be
    dated and would keep every blob while it lives.  On a local store, then the session
    directories they leave empty (a tier would gain one per task for ever); a writer that
    puts into one meanwhile makes it again (``LocalStorage`` retries such a put)."""
    delete = delete or (lambda st, ks: st.delete_many(ks))
    keys = list(keys)
    delete(storage, [k for k in keys if not k.endswith("/" + START)])
    delete(storage, [k for k in keys if k.endswith("/" + START)])
    for directory in {os.path.dirname(p) for p in map(storage.local_path, keys) if p}:
        with contextlib.suppress(OSError):  # not empty, or gone already
            os.rmdir(directory)
