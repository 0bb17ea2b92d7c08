"""The commit protocol of one checkpoint.

1. upload every blob (content-addressed, skipped when already stored), under the writer's lease
   (:mod:`.leases`), so that garbage collection keeps them;
2. settle the lease: name the blobs the save relies on without having uploaded them, and check
   (re-uploading what is gone) whatever a concurrent collection may have removed;
3. (multi-writer checkpoints) write each writer's part under ``parts/<id>/``;
4. write the manifest, last, under a unique key.

A crash before step 4 leaves only unreferenced blobs (reclaimed by GC once the lease expires):
the checkpoint is not listed, not loadable, and the previous checkpoint stays the latest.
Step 4 is one atomic put.
"""

from __future__ import annotations

import itertools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ..errors import StorageError
from ..storage.base import Storage
from .layout import blob_key, writer_token
from .lease_writer import Ticket
from .manifest import Manifest, now_ms
from .position import RANK0, Position
from .scan import scan
from .scope import Scope
from .transfer import Progress, SaveStats, TransferOptions, timed
from .upload import BlobWriter, upload_tree

# Orders saves of one process that land in the same millisecond.
_SEQ = itertools.count()


def _unconfirmed_missing(
    storage: Storage, entries: list, stats: SaveStats, writer: BlobWriter, workers: int
) -> list[str]:
    """Blobs the manifest will reference that this save trusted without checking, and that are
    no longer stored because the store was wiped under the process.

    Garbage collection cannot remove them: the writer's lease protects what it stored or named
    (:mod:`.leases`, checked again in :func:`_settle`).  So one existence check of one blob of
    the newest checkpoint this process committed with them (a canary: a wiped root or
    ``blobs/`` loses it too) vouches for all of them; the others are checked one by one.  A first
    save checks nothing.
    """
    trusted = {c.blob for e in entries for c in e.chunks} - stats.confirmed
    if not trusted:
        return []
    vouchers: dict = {}
    for h in trusted:
        vouchers.setdefault(writer.referenced_by.get(h), []).append(h)
    alive = {k for k, hs in vouchers.items() if k is not None and storage.exists(blob_key(min(hs)))}
    unvouched = [h for k, hs in vouchers.items() if k not in alive for h in hs]
    return _absent(storage, unvouched, workers)


def _absent(storage: Storage, hashes: list[str], workers: int) -> list[str]:
    """The blobs of ``hashes`` that are not stored (existence checks in parallel)."""
    if not hashes:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(hashes)))) as pool:
        present = list(pool.map(lambda h: storage.exists(blob_key(h)), hashes))
    return [h for h, ok in zip(hashes, present) if not ok]


#: Rounds of "settle the lease, upload again what is gone" before a save gives up.
SETTLE_ROUNDS = 5


def _settle(
    storage: Storage,
    files: list,
    entries: list,
    writer: BlobWriter,
    ticket: Ticket,
    opts: TransferOptions,
    stats: SaveStats,
) -> tuple[list, SaveStats]:
    """Make every blob ``entries`` reference safe from GC until the commit (see
    :meth:`.lease_writer.WriterLease.settle`), uploading again from ``files`` what is found missing.
    Returns the entries and statistics to commit."""
    for _ in range(SETTLE_ROUNDS):
        refs = {c.blob for e in entries for c in e.chunks}
        missing = writer.lease.settle(
            ticket, refs, stats.confirmed, lambda hs: _absent(storage, hs, opts.workers)
        )
        if not missing:
            return entries, stats
        # A collection removed blobs this save deduplicated against: store them again.
        writer.forget(missing)
        stats = SaveStats(seconds=stats.seconds)
        entries = upload_tree(files, writer, opts, stats)
    raise StorageError(
        "Blobs this save needs kept disappearing from %s while it committed (%d rounds of "
        "re-uploading them): something other than garbage collection is deleting blobs/. "
        "Nothing was committed." % (storage.url, SETTLE_ROUNDS)
    )


def _repair_after_lapse(
    storage: Storage,
    files: list,
    manifest: Manifest,
    writer: BlobWriter,
    opts: TransferOptions,
    is_part: bool,
) -> None:
    """The lease lapsed between the settle and the commit (the process was stopped for longer
    than ``ttl/2``): GC may have removed blobs the just-written manifest (or part) references.
    Check them all and upload again what is gone, so that ``save()`` never returns a torn
    checkpoint; if that fails, withdraw the manifest and raise."""
    refs = sorted({c.blob for e in manifest.files for c in e.chunks})
    try:
        missing = _absent(storage, refs, opts.workers)
        if missing:
            writer.forget(missing)
            entries = upload_tree(files, writer, opts, SaveStats())
            if [e.to_json() for e in entries] != [e.to_json() for e in manifest.files]:
                raise StorageError("the files changed since they were read")
            missing = _absent(storage, refs, opts.workers)
            if missing:
                raise StorageError("%d blobs are still missing" % len(missing))
    except Exception as exc:
        if not is_part:
            storage.delete(manifest.key)
        raise StorageError(
            "This save was paused for longer than its lease allows (METAFLOW_CHECKPOINT_"
            "LEASE_SECONDS / 2) just before its commit, and blobs it needs could not be restored "
            "(%s); the checkpoint %s was withdrawn. Save again." % (exc, manifest.key)
        ) from exc


def next_seq() -> int:
    """The next per-process save sequence number (orders saves within one millisecond)."""
    return next(_SEQ)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def save(
    storage: Storage,
    src: str,
    scope: Scope,
    *,
    name: str,
    metadata: dict,
    latest: bool,
    opts: TransferOptions,
    writer: Optional[BlobWriter] = None,
    reuse: Optional[Callable[[Manifest], Optional[Manifest]]] = None,
    progress: Optional[Progress] = None,
    created_ms: Optional[int] = None,
    seq: Optional[int] = None,
    publish: Optional[Callable[[Manifest], None]] = None,
    source: Optional[dict] = None,
    position: Position = RANK0,
    sharded: bool = False,
) -> Manifest:
    """Save the file or directory ``src`` as one checkpoint and commit it.

    ``name`` and ``metadata`` must already be validated: nothing here raises for bad input
    after bytes have been written.  ``reuse``, given the manifest about to be committed, may
    return an already committed one with the same content; that one is returned instead and
    nothing is committed (uploads of content that is already stored).  ``created_ms`` and
    ``seq`` date the checkpoint (default: now); a background save passes those of its
    snapshot, so that it orders before saves made after it even though it commits later.
    ``publish`` replaces the final manifest write (a ``@parallel`` rank writes its part).
    ``source`` adds fields to the manifest's ``source`` (the publisher of a named checkpoint,
    the ranks of a subprocess writer).  ``position`` is the writer (:mod:`.position`, spelled
    in the key); ``sharded`` flags a checkpoint every participant of a sharded save wrote.
    """
    writer_token(position, sharded)  # a sharded checkpoint with a writer: refused before any I/O
    own_writer = writer is None
    writer = writer or BlobWriter(storage)
    stats = SaveStats()
    with timed(stats, "scan"):
        files, dirs, kind = scan(src)
    ticket = writer.lease.begin_save()  # after the scan: bad input touches no store
    try:
        return _upload_and_commit(
            storage,
            files,
            dirs,
            kind,
            src,
            scope,
            writer,
            ticket,
            stats,
            name=name,
            metadata=metadata,
            latest=latest,
            opts=opts,
            reuse=reuse,
            progress=progress,
            created_ms=created_ms,
            seq=seq,
            publish=publish,
            source=source,
            position=position,
            sharded=sharded,
        )
    finally:
        writer.lease.end_save(ticket)
        if own_writer:
            writer.lease.close()


def _upload_and_commit(
    storage: Storage,
    files: list,
    dirs: list,
    kind: str,
    src: str,
    scope: Scope,
    writer: BlobWriter,
    ticket: Ticket,
    stats: SaveStats,
    *,
    name: str,
    metadata: dict,
    latest: bool,
    opts: TransferOptions,
    reuse: Optional[Callable[[Manifest], Optional[Manifest]]],
    progress: Optional[Progress],
    created_ms: Optional[int],
    seq: Optional[int],
    publish: Optional[Callable[[Manifest], None]],
    source: Optional[dict],
    position: Position,
    sharded: bool,
) -> Manifest:
    with timed(stats, "upload"):
        entries = upload_tree(files, writer, opts, stats, progress)
        missing = _unconfirmed_missing(storage, entries, stats, writer, opts.workers)
        if missing:
            # Blobs this process had stored before are gone (the store was wiped under it):
            # upload them again rather than commit a torn checkpoint.
            writer.forget(missing)
            stats = SaveStats(seconds=stats.seconds)
            entries = upload_tree(files, writer, opts, stats)
        entries, stats = _settle(storage, files, entries, writer, ticket, opts, stats)
    manifest = Manifest(
        id=new_id(),
        name=name,
        scope=scope,
        latest=latest,
        created_ms=created_ms if created_ms is not None else now_ms(),
        seq=seq if seq is not None else next_seq(),
        metadata=metadata,
        files=entries,
        dirs=dirs,
        source={"kind": kind, "name": os.path.basename(os.path.abspath(src)), **(source or {})},
        stats=stats.to_json(),
        chunk_size=opts.chunk_size,
        position=position,
        sharded=sharded,
    )
    if reuse is not None:
        existing = reuse(manifest)
        if existing is not None:
            existing.stats = dict(stats.to_json(), reused=True)
            return existing
    with timed(stats, "commit"):
        if publish is not None:
            publish(manifest)
        else:
            storage.put_bytes(manifest.key, manifest.dumps())
        if writer.lease.lapsed_since(ticket):
            _repair_after_lapse(storage, files, manifest, writer, opts, publish is not None)
        if publish is None:
            writer.vouch(manifest.key, (c.blob for e in entries for c in e.chunks))
    manifest.stats = stats.to_json()  # includes the commit time for the caller (not stored)
    return manifest
