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
from typing import Optional

from ..storage.base import Storage
from .manifest import Manifest, now_ms
from .scope import Scope
from .transfer import BlobWriter, SaveStats, TransferOptions, scan, timed, upload_tree

# Orders saves of one process that land in the same millisecond.
_SEQ = itertools.count()


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
) -> Manifest:
    """Save the file or directory ``src`` as one checkpoint and commit it.

    ``name`` and ``metadata`` must already be validated: nothing here raises for bad input
    after bytes have been written.
    """
    writer = writer or BlobWriter(storage)
    stats = SaveStats()
    with timed(stats, "scan"):
        files, dirs, kind = scan(src)
    with timed(stats, "upload"):
        entries = upload_tree(files, writer, opts, stats)
    manifest = Manifest(
        id=new_id(),
        name=name,
        scope=scope,
        latest=latest,
        created_ms=now_ms(),
        seq=next(_SEQ),
        metadata=metadata,
        files=entries,
        dirs=dirs,
        source={"kind": kind, "name": os.path.basename(os.path.abspath(src))},
        stats=stats.to_json(),
        chunk_size=opts.chunk_size,
    )
    with timed(stats, "commit"):
        storage.put_bytes(manifest.key, manifest.dumps())
    manifest.stats = stats.to_json()  # includes the commit time for the caller (not stored)
    return manifest
