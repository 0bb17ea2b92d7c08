"""Keep a local tier (:mod:`.tier`) from growing without bound (docs/upload.md, "Cleanup").

Three steps, each best effort for the caller (the task logs one warning and goes on):

* :func:`remove` deletes given tier checkpoints and their upload records
  (:mod:`.upload_status`), except, unless the caller knows it is moot, those whose record says
  ``failed``: the only copy of a checkpoint whose upload gave up is kept;
* :func:`sweep` deletes the tier checkpoints (of any task) whose manifest file is older than a
  cutoff by the tier's own clock, except ``failed`` ones, those a live process is uploading and
  every one of a task whose writer is alive on this host, and the records whose checkpoint is
  gone from the tier;
* :func:`collect` runs the store's own GC on the tier, so blobs no tier checkpoint references
  are deleted under the lease protocol of ADR 002: another task saving into the same tier at
  that moment keeps every blob it relies on (grace 0 is safe, as for any store).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from ..errors import CheckpointConfigError
from .gc import GcReport
from .layout import (
    BLOBS,
    LEASES,
    MANIFESTS_PREFIX,
    split_manifest_key,
    upload_record_key,
    upload_record_manifest,
)
from .store import CheckpointStore
from .upload_status import FAILED, UPLOADING, UploadRecords, effective, live_writer

#: Where :func:`mark_writer` records a live writer of a task: ``writers/<task>/<host>-<pid>``.
WRITERS_PREFIX = "writers/"

#: Grace period of the tier's GC: 0, because leases protect what a concurrent save relies on
#: (ADR 002); temp files of writes in flight are kept anyway (``gc_temps.MIN_AGE``).
GRACE_SECONDS = 0.0


@dataclass
class Cleaned:
    """What a cleanup deleted (``removed``: manifest keys; ``records``: upload records) and
    the ``failed`` checkpoints it kept; a sweep also says how many ``tasks`` it removed
    checkpoints of, the ``oldest`` age (seconds) among them, and the task prefixes it left
    alone because their writer is alive (``live``)."""

    removed: list[str] = field(default_factory=list)
    kept_failed: list[str] = field(default_factory=list)
    records: int = 0
    tasks: int = 0
    oldest: float = 0.0
    live: list[str] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.removed or self.records)


def remove(tier: CheckpointStore, keys: Iterable[str], keep_failed: bool = True) -> Cleaned:
    """Delete the tier checkpoints at ``keys`` and their records, except ``failed`` ones
    (with ``keep_failed``; the caller passes False for keys it knows are in the flow's store
    or superseded by a newer uploaded one: a moot failure)."""
    records = UploadRecords(tier.storage)
    out = Cleaned()
    for key in keys:
        record = records.get(key)
        if keep_failed and record is not None and record.status == FAILED:
            out.kept_failed.append(key)
            continue
        tier.delete(key, force=True)
        out.removed.append(key)
        if record is not None:
            records.delete(key)
            out.records += 1
    prune_dirs(tier, [k for key in out.removed for k in (key, upload_record_key(key))])
    return out


def prune_dirs(tier: CheckpointStore, keys: Iterable[str]) -> None:
    """Remove the directories left empty above the tier paths of deleted ``keys``, up to (not
    including) their top-level folder (``manifests/``, ``uploads/``, ...).  A writer that puts
    into one at that moment makes it again (``LocalStorage`` retries a put whose directory
    vanished), so a non-empty or re-created directory simply stays."""
    dirs: set[str] = set()
    for key in keys:
        path = tier.storage.local_path(key)
        top = tier.storage.local_path(key.split("/", 1)[0])
        if path is None or top is None:
            return  # not a local tier
        parent = os.path.dirname(path)
        while len(parent) > len(top) and parent.startswith(top + os.sep):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    for directory in sorted(dirs, key=len, reverse=True):  # deepest first
        try:
            os.rmdir(directory)
        except OSError:
            pass  # not empty (another task's), or gone already


def orphan_records(tier: CheckpointStore, prefix: str = MANIFESTS_PREFIX) -> int:
    """Delete the upload records under ``prefix`` (a task prefix, or every task) whose
    checkpoint is no longer in the tier (retention pruned it, a cleanup removed it); returns
    how many."""
    records = UploadRecords(tier.storage)
    manifests = {o.key for o in tier.storage.list(prefix)}
    stale = []
    for o in tier.storage.list(upload_record_key(prefix)):
        manifest = upload_record_manifest(o.key)
        if manifest is not None and manifest not in manifests:
            stale.append(manifest)
    for manifest in stale:
        records.delete(manifest)
    prune_dirs(tier, [upload_record_key(m) for m in stale])
    return len(stale)


def sweep(
    tier: CheckpointStore,
    max_age_seconds: float,
    now: Optional[float] = None,
    moot: Optional[Callable[[list[str]], set[str]]] = None,
) -> Cleaned:
    """Delete the tier's checkpoints whose manifest file is older than ``max_age_seconds``
    (against ``now``, default this machine's clock: the tier is on its disk), except
    ``failed`` ones and those a live process on this host is ``uploading``; then the records
    with no checkpoint left.  ``moot(keys)``, given the old ``failed`` keys, returns those
    whose failure no longer matters (in the flow's store after all, or superseded there by a
    newer upload of their series): they are deleted too."""
    if not max_age_seconds >= 0:
        raise CheckpointConfigError("max_age_seconds must be >= 0, not %r." % (max_age_seconds,))
    now = time.time() if now is None else now
    cutoff = now - max_age_seconds
    records = UploadRecords(tier.storage)
    ages = {
        o.key: now - o.mtime
        for o in tier.storage.list(MANIFESTS_PREFIX)
        if split_manifest_key(o.key) is not None and o.mtime is not None and o.mtime < cutoff
    }
    # A task whose writer is alive on this host (its mark_writer) may still load or upload
    # any of its checkpoints, however old: its whole prefix is left alone.
    prefixes = {k: k.rsplit("/", 1)[0] + "/" for k in ages}
    live = sorted(p for p in set(prefixes.values()) if _writer_alive(tier, p))
    old = [k for k in ages if prefixes[k] not in live]
    states = {k: effective(records.get(k)) for k in old}
    out = remove(tier, [k for k in old if states[k] != UPLOADING])
    out.live = live
    if moot is not None and out.kept_failed:
        gone = moot(list(out.kept_failed))
        if gone:
            done = remove(tier, [k for k in out.kept_failed if k in gone], keep_failed=False)
            out.removed += done.removed
            out.records += done.records
            out.kept_failed = [k for k in out.kept_failed if k not in gone]
    out.records += orphan_records(tier)
    out.tasks = len({prefixes[k] for k in out.removed})
    out.oldest = max((ages[k] for k in out.removed), default=0.0)
    return out


def _writer_key(task_prefix: str, host: str = "", pid: int = 0) -> str:
    rest = task_prefix[len(MANIFESTS_PREFIX) :] if task_prefix.startswith(MANIFESTS_PREFIX) else ""
    return WRITERS_PREFIX + rest + ("%s-%d" % (host, pid) if host else "")


def mark_writer(tier: CheckpointStore, task_prefix: str) -> None:
    """Record that this process (host, pid) writes the task at ``task_prefix`` into the tier:
    a sweep leaves that task's checkpoints alone while it is alive."""
    tier.storage.put_bytes(_writer_key(task_prefix, socket.gethostname(), os.getpid()), b"")


def unmark_writer(tier: CheckpointStore, task_prefix: str) -> None:
    """This process no longer writes the task at ``task_prefix`` (its end)."""
    key = _writer_key(task_prefix, socket.gethostname(), os.getpid())
    tier.storage.delete(key)
    prune_dirs(tier, [key])


def _writer_alive(tier: CheckpointStore, task_prefix: str) -> bool:
    """Whether a writer of the task at ``task_prefix`` is alive on this host; the marks of dead
    writers are removed on the way."""
    alive = False
    for o in tier.storage.list(_writer_key(task_prefix)):
        host, _, pid = o.key.rsplit("/", 1)[1].rpartition("-")
        if pid.isdigit() and live_writer(host, int(pid)):
            alive = True
        else:
            tier.storage.delete(o.key)
    return alive


def collect(tier: CheckpointStore) -> GcReport:
    """Delete the tier's blobs no tier checkpoint references (the store's GC, forced: a tier
    emptied by a cleanup holds no manifest, which is expected here).

    Raises
    ------
    CheckpointConfigError
        Another collection of this tier is running (its run collects instead).
    CheckpointException
        As :func:`.gc.collect`.
    """
    report = tier.gc(grace_seconds=GRACE_SECONDS, force=True)
    # The empty directories of deleted blobs and of closed lease sessions go too; a writer
    # that puts into one at that moment makes it again (LocalStorage retries such a put).
    for top in (tier.storage.local_path(BLOBS), tier.storage.local_path(LEASES)):
        for directory, dirs, files in os.walk(top, topdown=False) if top else ():
            if directory != top and not dirs and not files:
                with contextlib.suppress(OSError):  # a file arrived meanwhile
                    os.rmdir(directory)
    return report
