"""The commit protocol of one checkpoint.

1. upload every blob (content-addressed, skipped when already stored);
2. (multi-writer checkpoints) write each writer's part under ``parts/<id>/``;
3. write the manifest, last, under a unique key.

A crash before step 3 leaves only unreferenced blobs (reclaimed by GC): the checkpoint is not
listed, not loadable, and the previous checkpoint stays the latest.  Step 3 is one atomic put.
"""

from __future__ import annotations

import itertools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ..storage.base import Storage
from .manifest import Manifest, now_ms
from .scan import scan
from .scope import Scope, blob_key
from .transfer import Progress, SaveStats, TransferOptions, timed
from .upload import BlobWriter, upload_tree

# Orders saves of one process that land in the same millisecond.
_SEQ = itertools.count()


def _unconfirmed_missing(
    storage: Storage, entries: list, stats: SaveStats, writer: BlobWriter, workers: int
) -> list[str]:
    """Blobs the manifest will reference that this save trusted without checking, and that are
    no longer stored.

    A trusted blob that a checkpoint committed by this process references is safe while that
    checkpoint exists (GC never collects a referenced blob), so one existence check of that
    manifest vouches for all its blobs; the others are checked one by one.  A first save checks
    nothing.
    """
    trusted = {c.blob for e in entries for c in e.chunks} - stats.confirmed
    if not trusted:
        return []
    vouchers: dict = {}
    for h in trusted:
        vouchers.setdefault(writer.referenced_by.get(h), []).append(h)
    alive = {k for k in vouchers if k is not None and storage.exists(k)}
    unvouched = [h for k, hs in vouchers.items() if k not in alive for h in hs]
    if not unvouched:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(unvouched)))) as pool:
        present = pool.map(lambda h: storage.exists(blob_key(h)), unvouched)
        return [h for h, ok in zip(unvouched, present) if not ok]


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
) -> Manifest:
    """Save the file or directory ``src`` as one checkpoint and commit it.

    ``name`` and ``metadata`` must already be validated: nothing here raises for bad input
    after bytes have been written.  ``reuse``, given the manifest about to be committed, may
    return an already committed one with the same content; that one is returned instead and
    nothing is committed (uploads of content that is already stored).  ``created_ms`` and
    ``seq`` date the checkpoint (default: now); a background save passes those of its
    snapshot, so that it orders before saves made after it even though it commits later.
    ``publish`` replaces the final manifest write (a ``@parallel`` rank writes its part).
    ``source`` adds fields to the manifest's ``source`` (the publisher of a named checkpoint).
    """
    writer = writer or BlobWriter(storage)
    stats = SaveStats()
    with timed(stats, "scan"):
        files, dirs, kind = scan(src)
    with timed(stats, "upload"):
        entries = upload_tree(files, writer, opts, stats, progress)
        missing = _unconfirmed_missing(storage, entries, stats, writer, opts.workers)
        if missing:
            # Blobs this process had stored before are gone (garbage collection after their
            # checkpoints were pruned): upload them again rather than commit a torn checkpoint.
            writer.forget(missing)
            stats = SaveStats(seconds=stats.seconds)
            entries = upload_tree(files, writer, opts, stats)
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
            writer.vouch(manifest.key, (c.blob for e in entries for c in e.chunks))
    manifest.stats = stats.to_json()  # includes the commit time for the caller (not stored)
    return manifest
