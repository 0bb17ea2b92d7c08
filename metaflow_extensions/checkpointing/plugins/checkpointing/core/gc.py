"""Garbage collection: delete blobs no manifest references, safely while flows save.

Mark and sweep over one checkpoint root:

1. list every manifest and read it (in parallel); any manifest that cannot be read aborts the
   collection, since its blobs cannot be known;
2. list every blob; candidates are blobs no manifest references **and** older than the grace
   period, so blobs of a save still in flight (uploaded, manifest not yet written) are safe;
3. list the manifests again and read the ones committed meanwhile, dropping the candidates
   they reference;
4. delete the remaining candidates (batched), and pins whose checkpoint is gone.

A save that reuses a blob it did not upload itself checks that the blob still exists just
before committing (``commit.save``), so a blob collected after its last checkpoint was pruned is
uploaded again rather than referenced while missing.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ..errors import CheckpointConfigError, ManifestError, StorageNotFound
from ..storage.base import Storage
from . import manifest as mf
from .pins import PINS, manifest_of
from .scope import BLOBS, MANIFESTS

#: Default grace period: blobs younger than this are never collected.
DEFAULT_GRACE_SECONDS = 6 * 3600


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

    def to_json(self) -> dict:
        return asdict(self)


def _references(storage: Storage, keys: list[str], workers: int) -> set[str]:
    def blobs_of(key: str) -> Optional[set[str]]:
        try:
            data = storage.get_bytes(key)
        except StorageNotFound:
            return None  # deleted since listed: references nothing any more
        try:
            m = mf.loads(data, key)
        except ManifestError as exc:
            raise ManifestError(
                "Garbage collection stopped before deleting anything: %s Delete or repair that "
                "checkpoint first." % exc.message
            ) from None
        return {c.blob for f in m.files for c in f.chunks}

    out: set[str] = set()
    if not keys:
        return out
    with ThreadPoolExecutor(max(1, min(workers, len(keys)))) as pool:
        for found in pool.map(blobs_of, keys):
            out |= found or set()
    return out


def _manifest_keys(storage: Storage) -> set[str]:
    return {o.key for o in storage.list(MANIFESTS + "/") if mf.is_manifest_key(o.key)}


def collect(
    storage: Storage,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    force: bool = False,
    workers: int = 16,
    now: Optional[float] = None,
    log: Callable[[str], None] = lambda msg: None,
) -> GcReport:
    """Mark and sweep the blobs of one root; return what was (or would be) reclaimed.

    Raises
    ------
    CheckpointConfigError
        The root has no manifest at all (a wrong root would lose every blob) and ``force`` is
        false, or ``grace_seconds`` is negative.
    ManifestError
        A manifest cannot be read: nothing is deleted.
    """
    if grace_seconds < 0:
        raise CheckpointConfigError("The grace period must not be negative.")
    started = time.perf_counter()
    now = time.time() if now is None else now
    report = GcReport(dry_run=dry_run)
    keys = _manifest_keys(storage)
    if not keys and not force:
        raise CheckpointConfigError(
            "%s holds no checkpoint manifest, so every blob there would be deleted. Check the "
            "root; pass force (CLI: --force) to collect it anyway." % storage.url
        )
    log("Marking blobs of %d checkpoints..." % len(keys))
    referenced = _references(storage, sorted(keys), workers)
    blobs = [o for o in storage.list(BLOBS + "/") if o.key.count("/") == 2]
    report.blobs = len(blobs)
    report.bytes_total = sum(o.size for o in blobs)
    candidates = {}
    for o in blobs:
        h = o.key.rsplit("/", 1)[1]
        if h in referenced:
            report.blobs_referenced += 1
        elif o.mtime is not None and o.mtime > now - grace_seconds:
            report.blobs_young += 1
        else:
            candidates[h] = o
    # Checkpoints committed while we marked may reference candidates: mark them too.
    later = _manifest_keys(storage) - keys
    for h in _references(storage, sorted(later), workers) & set(candidates):
        report.blobs_referenced += 1
        del candidates[h]
    report.manifests = len(keys | later)
    report.blobs_deleted = len(candidates)
    report.bytes_reclaimed = sum(o.size for o in candidates.values())
    live = keys | later
    stale_pins = [
        o.key
        for o in storage.list(PINS + "/")
        if manifest_of(o.key) not in live and (o.mtime is None or o.mtime < now - grace_seconds)
    ]
    report.pins_deleted = len(stale_pins)
    if not dry_run:
        log("Deleting %d unreferenced blobs..." % len(candidates))
        storage.delete_many([o.key for o in candidates.values()], workers)
        storage.delete_many(stale_pins, workers)
    report.seconds = round(time.perf_counter() - started, 3)
    return report
