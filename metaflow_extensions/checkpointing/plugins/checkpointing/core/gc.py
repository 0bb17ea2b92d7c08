"""Garbage collection: delete blobs nothing needs, safely while flows save.

Mark and sweep over one checkpoint root, as one *run* recorded under ``gc/runs/<run>/``
(:mod:`.gc_run`; keys in :mod:`.layout`; see :mod:`.leases` for the protocol with writers and
``docs/design/adr-002-gc-liveness.md`` for why no interleaving loses a blob a committed or
committing checkpoint needs):

1. write the run record ``gc/runs/<run>/start``; its mtime in a listing of ``gc/runs/`` is the
   run's "now" (the store's clock).  Another live run makes this one stop (one at a time);
2. mark: read every ``@parallel`` part and every manifest.  One that cannot be read stops the
   collection before anything is deleted, naming it;
3. list the blobs; candidates are unreferenced and older than the grace period;
4. write ``gc/runs/<run>/sweep``, then list ``leases/``: every live lease keeps the blobs it
   names and those stored since it started (a lease that cannot be judged keeps everything; a
   ``names-*`` object that cannot be read stops the collection);
5. list the parts, then the manifests, again and mark the new ones (a save that committed and
   ended its lease meanwhile is found here);
6. delete the candidates in batches, each only while the run's heartbeat (rewritten every
   :data:`.leases.HEARTBEAT_SECONDS` by a thread) is fresh; then stale pins, the metrics logs
   of tasks with no checkpoint left (:mod:`.metrics_log`), expired leases, records of old runs
   and parts of gangs that never committed; write ``done``.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ..errors import CheckpointConfigError, ManifestError, StorageNotFound
from ..storage.base import ObjectInfo, Storage
from . import leases as ls
from . import manifest as mf
from .gang import part_blobs
from .gc_run import Run
from .gc_temps import remove_temps, stale_temps
from .layout import (
    BLOBS_PREFIX,
    LEASE_NAMES,
    MANIFESTS_PREFIX,
    METRICS_PREFIX,
    PARTS_PREFIX,
    PINS_PREFIX,
    blob_of,
    gc_run_key,
    is_part_key,
    lease_prefix,
    metrics_manifest,
    pinned_manifest,
    task_prefix_of,
)
from .tempnames import is_temp_name

#: Default grace period: blobs younger than this are never collected.  Leases make in-flight
#: saves safe without it; it remains a second line of defence (and keeps recent data around).
DEFAULT_GRACE_SECONDS = 6 * 3600
#: Parts of a ``@parallel`` save older than this belong to a gang that never committed.
STALE_PART_SECONDS = 7 * 86400.0


@dataclass
class GcReport:
    """What a collection found and did (``dry_run``: what it would do)."""

    manifests: int = 0
    blobs: int = 0
    bytes_total: int = 0
    blobs_referenced: int = 0
    blobs_young: int = 0
    blobs_deleted: int = 0
    bytes_reclaimed: int = 0
    pins_deleted: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    #: ``@parallel`` parts marked (their gang has not committed yet).
    parts: int = 0
    #: Unreferenced blobs kept because a live lease (a save in flight) may need them.
    blobs_leased: int = 0
    leases_live: int = 0
    leases_deleted: int = 0
    #: Records of GC runs (this one's excluded) and stale parts removed.
    runs_deleted: int = 0
    parts_deleted: int = 0
    #: Metrics log entries of tasks with no checkpoint left.
    metrics_deleted: int = 0
    #: Temp files of local-store writes killed mid-write, older than the grace period.
    temps_deleted: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def check_grace(grace_seconds: object) -> float:
    """A grace period in seconds: a finite number >= 0.

    Raises
    ------
    CheckpointConfigError
        Naming the value (NaN would silently disable the age check, infinity collect nothing).
    """
    try:
        grace = float(grace_seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        grace = math.nan
    if isinstance(grace_seconds, bool) or not math.isfinite(grace) or grace < 0:
        raise CheckpointConfigError(
            "The grace period must be a finite number of seconds >= 0, not %r." % (grace_seconds,)
        )
    return grace


# ------------------------------------------------------------------------------------ marking
class _Marker:
    """Blobs referenced by the parts and manifests read so far (each key read once)."""

    def __init__(self, storage: Storage, workers: int):
        self.storage = storage
        self.workers = workers
        self.parts: set[str] = set()
        self.manifests: set[str] = set()
        self.referenced: set[str] = set()

    def list_parts(self) -> list[str]:
        return sorted(o.key for o in self.storage.list(PARTS_PREFIX) if is_part_key(o.key))

    def list_manifests(self) -> list[str]:
        """Every manifest key; an object under ``manifests/`` this release cannot parse stops
        the collection: it may be the commit of a newer release's checkpoint (whose blobs
        would otherwise look unreferenced), so nothing may be deleted beside it."""
        keys = []
        for o in self.storage.list(MANIFESTS_PREFIX):
            if mf.is_manifest_key(o.key):
                keys.append(o.key)
            elif not o.key.endswith("/") and not is_temp_name(o.key.rsplit("/", 1)[-1]):
                raise ManifestError(
                    "Garbage collection stopped before deleting anything: %s is not a "
                    "checkpoint manifest this release can read (written by a newer release of "
                    "metaflow-checkpointing, or not a checkpoint), so the blobs it may need are "
                    "unknown. Upgrade metaflow-checkpointing, or remove that object if it is "
                    "not a checkpoint, then run gc again." % self.storage.full_url(o.key),
                    key=o.key,
                )
        return sorted(keys)

    def mark_parts(self, keys: list[str]) -> set[str]:
        """Read the parts not read yet; return the blobs they reference."""
        return self._mark(self._part, keys, self.parts)

    def mark_manifests(self, keys: list[str]) -> set[str]:
        """Read the manifests not read yet; return the blobs they reference."""
        return self._mark(self._manifest, keys, self.manifests)

    def _mark(self, fn: Callable[[str], set[str]], keys: list[str], seen: set) -> set[str]:
        new = [k for k in keys if k not in seen]
        found: set[str] = set()
        for blobs in self._read(fn, new):
            found |= blobs
        seen |= set(new)
        self.referenced |= found
        return found

    def _read(self, fn: Callable[[str], set[str]], keys: list[str]) -> list[set[str]]:
        if len(keys) <= 1:
            return [fn(k) for k in keys]
        with ThreadPoolExecutor(max(1, min(self.workers, len(keys)))) as pool:
            return list(pool.map(fn, keys))

    def _manifest(self, key: str) -> set[str]:
        try:
            data = self.storage.get_bytes(key)
        except StorageNotFound:
            return set()  # deleted since listed: references nothing any more
        try:
            m = mf.loads(data, key)
        except ManifestError as exc:
            raise ManifestError(
                "Garbage collection stopped before deleting anything: %s It cannot know which "
                "blobs that checkpoint needs. Delete it with `metaflow checkpoint delete %s` "
                "(or repair it), then run gc again." % (exc.message, key)
            ) from None
        return {c.blob for f in m.files for c in f.chunks}

    def _part(self, key: str) -> set[str]:
        try:
            data = self.storage.get_bytes(key)
        except StorageNotFound:
            return set()  # its gang committed (the manifest references the blobs) or gave up
        try:
            return part_blobs(data, key)
        except ManifestError as exc:
            raise ManifestError(
                "Garbage collection stopped before deleting anything: %s It cannot know which "
                "blobs that unfinished @parallel save needs. Remove the object %s (the gang's "
                "save can never commit with it), then run gc again."
                % (exc.message, self.storage.full_url(key))
            ) from None


# ------------------------------------------------------------------------------------ collect
def collect(
    storage: Storage,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    force: bool = False,
    workers: int = 16,
    now: Optional[float] = None,
    lease_ttl: Optional[float] = None,
    log: Callable[[str], None] = lambda msg: None,
) -> GcReport:
    """Mark and sweep the blobs of one root; return what was (or would be) reclaimed.

    Parameters
    ----------
    grace_seconds : float
        Never delete a blob younger than this (a finite number >= 0; 0 is safe: leases protect
        saves in flight).
    dry_run : bool
        Report only; nothing is written or deleted (no run record either).
    force : bool
        Collect a root that holds no manifest at all.
    now : float, optional
        The time ages are judged against (default: the store's own clock, read from the run
        record; a dry run uses this machine's clock).
    lease_ttl : float, optional
        Judge every lease with this lifetime instead of the one it declares.

    Raises
    ------
    CheckpointConfigError
        Invalid ``grace_seconds``; the root has no manifest and ``force`` is false; another
        collection is running.
    ManifestError
        A manifest, part or lease ``names-*`` object cannot be read: nothing is deleted.
    StorageError
        A listing or read failed (never treated as "nothing there"), or the run's heartbeat
        could not be kept fresh (deleting stops).
    """
    grace = check_grace(grace_seconds)
    started = time.perf_counter()
    report = GcReport(dry_run=dry_run)
    marker = _Marker(storage, workers)
    # A first listing, before writing anything: a wrong root must not be written to.
    parts, manifests = marker.list_parts(), marker.list_manifests()
    if not manifests and not force:
        raise CheckpointConfigError(
            "%s holds no checkpoint manifest, so every blob there would be deleted. Check the "
            "root; pass force (CLI: --force) to collect it anyway." % storage.url
        )
    run = None if dry_run else Run(storage, log)
    runs: dict = {}
    if run is not None:
        store_now, runs = run.begin()
        now = store_now if now is None else now
    elif now is None:
        now = time.time()
    try:
        _collect(storage, marker, parts, manifests, run, runs, grace, now, lease_ttl, report, log)
    except BaseException as exc:
        if run is not None:
            run.finish({"state": "failed", "error": "%s: %s" % (type(exc).__name__, exc)})
        raise
    report.seconds = round(time.perf_counter() - started, 3)
    if run is not None:
        run.finish({"state": "done", "report": report.to_json()})
    return report


def _collect(
    storage: Storage,
    marker: _Marker,
    parts: list[str],
    manifests: list[str],
    run: Optional[Run],
    runs: dict,
    grace: float,
    now: float,
    lease_ttl: Optional[float],
    report: GcReport,
    log: Callable[[str], None],
) -> None:
    log("Marking blobs of %d checkpoints and %d unfinished parts..." % (len(manifests), len(parts)))
    marker.mark_parts(parts)
    marker.mark_manifests(manifests)
    blobs = [(h, o) for o in storage.list(BLOBS_PREFIX) if (h := blob_of(o.key)) is not None]
    report.blobs = len(blobs)
    report.bytes_total = sum(o.size for _, o in blobs)
    candidates: dict[str, ObjectInfo] = {}
    for h, o in blobs:
        if h in marker.referenced:
            report.blobs_referenced += 1
        elif o.mtime is not None and o.mtime > now - grace:
            report.blobs_young += 1
        else:
            candidates[h] = o

    # Leases, read only after the sweep phase is recorded: a writer that names blobs later
    # sees this run sweeping and checks them after it is done.
    if run is not None:
        run.enter(ls.RUN_SWEEP)
    leases = ls.list_leases(storage, ttl_seconds=lease_ttl, now=now, read_names="live")
    live = [lease for lease in leases if not lease.expired]
    report.leases_live = len(live)
    for lease in live:
        bad = [
            k for k in lease.unreadable if k.startswith(lease_prefix(lease.session) + LEASE_NAMES)
        ]
        if bad:
            raise ManifestError(
                "Garbage collection stopped before deleting anything: lease object %s cannot "
                "be read, so the blobs a save in flight relies on are unknown. It expires %.0f s "
                "after its last refresh; if no save is running there, remove %s, then run gc "
                "again." % (bad[0], lease.ttl, storage.full_url(lease_prefix(lease.session)))
            )
        if lease.protects_everything:
            log(
                "Lease %s cannot be dated (%s): keeping every unreferenced blob while it lives."
                % (lease.session, "no start object" if lease.started is None else "unknown objects")
            )
    for h, o in list(candidates.items()):
        if any(lease.protects(h, o.mtime) for lease in live):
            report.blobs_leased += 1
            del candidates[h]

    # Parts written and checkpoints committed while we marked.  Parts are read before the
    # manifests are listed: a gang commit writes its manifest before it removes its parts, so
    # a part gone by the time it is read has a manifest the listing below finds.  And both come
    # after the leases: a save commits before it ends its lease.
    parts_now = marker.list_parts()
    later = marker.mark_parts(parts_now)
    later |= marker.mark_manifests(marker.list_manifests())
    for h in later & set(candidates):
        report.blobs_referenced += 1
        del candidates[h]
    report.manifests = len(marker.manifests)
    report.parts = len(set(parts_now))
    report.blobs_deleted = len(candidates)
    report.bytes_reclaimed = sum(o.size for o in candidates.values())

    stale_pins = [
        o.key
        for o in storage.list(PINS_PREFIX)
        if pinned_manifest(o.key) not in marker.manifests
        and (o.mtime is None or o.mtime < now - grace)
    ]
    report.pins_deleted = len(stale_pins)
    # A task's log is written after its manifests: a task saving meanwhile has a manifest
    # listed above or an entry younger than this run.
    tasks = {task_prefix_of(k) for k in marker.manifests}
    stale_metrics = [
        o.key
        for o in storage.list(METRICS_PREFIX)
        if task_prefix_of(metrics_manifest(o.key)) not in tasks
        and (o.mtime is None or o.mtime < now - grace)
    ]
    report.metrics_deleted = len(stale_metrics)
    expired = [lease for lease in leases if _gone(lease.refreshed, now, 2 * lease.ttl)]
    report.leases_deleted = len(expired)
    old_runs = [
        r
        for r in runs.values()
        if r.phase == ls.RUN_DONE and _gone(r.newest, now, ls.RUN_RECORD_SECONDS)
    ]
    dead_runs = [
        r for r in runs.values() if r.phase != ls.RUN_DONE and _gone(r.newest, now, ls.DEAD_SECONDS)
    ]
    report.runs_deleted = len(old_runs)
    stale_parts = [
        o.key
        for o in storage.list(PARTS_PREFIX)
        if is_part_key(o.key) and _gone(o.mtime, now, STALE_PART_SECONDS)
    ]
    report.parts_deleted = len(stale_parts)
    temps = stale_temps(storage, now, grace)
    report.temps_deleted = len(temps)
    if run is None:
        return

    log("Deleting %d unreferenced blobs..." % len(candidates))
    keys = [o.key for o in candidates.values()]
    batch = max(1, storage.DELETE_BATCH)
    for start in range(0, len(keys), batch):
        run.check_fresh()
        storage.delete_many(keys[start : start + batch], marker.workers)
    run.check_fresh()
    storage.delete_many(stale_pins, marker.workers)
    storage.delete_many(stale_metrics, marker.workers)
    ls.delete_lease_objects(
        storage,
        [k for lease in expired for k in lease.keys],
        lambda st, ks: st.delete_many(ks, marker.workers),
    )
    for r in dead_runs:
        # It deletes nothing any more (a run stops once its heartbeat is stale): say so, so
        # that writers stop waiting for it.
        storage.put_bytes(gc_run_key(r.run, ls.RUN_DONE), b'{"state": "dead"}')
    storage.delete_many([k for r in old_runs for k in r.keys], marker.workers)
    storage.delete_many(stale_parts, marker.workers)
    remove_temps(temps)


def _gone(mtime: Optional[float], now: float, age: float) -> bool:
    """Whether ``mtime`` is known and at least ``age`` seconds before ``now``."""
    return mtime is not None and mtime <= now - age
