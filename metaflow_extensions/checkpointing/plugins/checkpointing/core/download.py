"""Load: blobs -> verified files.

Load fetches each blob once, verifies its hash (fetching again once on a mismatch: a flip in
transit is not corruption at rest), writes its slices into temp files beside their final
names, and renames every file into place only when all of them are complete.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Optional

from ..errors import CheckpointIncomplete, CheckpointIntegrityError, StorageNotFound
from ..storage.base import Storage
from ..storage.local import UNSUPPORTED_COPY, copy_range, map_readonly
from .manifest import ChunkRef, FileEntry, Manifest, safe_relpath
from .scope import blob_key
from .transfer import Progress, TransferOptions, _no_progress, _run_bounded, digest

_TMP_SUFFIX = ".mfckpt-part-"


# ---------------------------------------------------------------------------------------- load
def _fetch_verified(storage: Storage, manifest: Manifest, blob: str, what: str) -> bytes:
    key = blob_key(blob)
    for attempt in (0, 1):
        try:
            data = storage.get_bytes(key)
        except StorageNotFound as exc:
            raise CheckpointIncomplete(
                "Checkpoint %s is incomplete: blob %s (data of %s) is missing from %s."
                % (manifest.key, blob, what, storage.url)
            ) from exc
        if digest(data) == blob:
            return data
        if attempt == 0:
            continue  # a flip in transit is not corruption at rest: fetch once more
    raise CheckpointIntegrityError(
        "Checkpoint %s: file %s failed verification (blob %s does not match its BLAKE3 hash). "
        "The stored data is corrupt; load another checkpoint." % (manifest.key, what, blob)
    )


def _check_slice(manifest: Manifest, blob: str, entry: FileEntry, piece, length: int) -> None:
    if len(piece) != length:
        raise CheckpointIntegrityError(
            "Checkpoint %s: blob %s is shorter than the manifest says (file %s)."
            % (manifest.key, blob, entry.path)
        )
    if entry.digest is not None and digest(piece) != entry.digest:
        raise CheckpointIntegrityError(
            "Checkpoint %s: file %s does not match its recorded hash." % (manifest.key, entry.path)
        )


def _fetch_local(storage: Storage, manifest: Manifest, blob: str, uses: list) -> bool:
    """Fast path for stores of plain local files: verify the blob through mmap and copy its
    slices in the kernel.  False when not applicable or the blob does not verify (the generic
    path then re-reads it and reports the error)."""
    path = storage.local_path(blob_key(blob))
    if path is None or not hasattr(os, "copy_file_range"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        with map_readonly(fd, size) as mapped:
            view = memoryview(mapped)
            try:
                if digest(view) != blob:
                    return False
                for tmp, entry, file_pos, c in uses:
                    _check_slice(
                        manifest, blob, entry, view[c.offset : c.offset + c.length], c.length
                    )
                    out = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
                    try:
                        copy_range(fd, out, c.length, c.offset, file_pos, what=path)
                    finally:
                        os.close(out)
            except OSError as exc:
                if exc.errno in UNSUPPORTED_COPY:
                    return False
                raise
            finally:
                view.release()
        return True
    finally:
        os.close(fd)


def target_path(dest: str, rel: str, cache: Optional[dict] = None) -> str:
    """Join a validated manifest path to ``dest``, refusing anything that escapes it.

    ``cache`` memoises resolved parent directories, so a load of many files resolves each
    directory once; an existing symlink at the final component is still resolved and refused
    if it points outside ``dest``.
    """
    safe_relpath(rel)
    path = os.path.join(dest, *rel.split("/"))
    cache = {} if cache is None else cache
    parent = os.path.dirname(path)
    for d in (dest, parent):
        if d not in cache:
            cache[d] = os.path.realpath(d)
    root, real_parent = cache[dest], cache[parent]
    real = os.path.join(real_parent, os.path.basename(path))
    if os.path.islink(path):
        real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        from ..errors import ManifestError

        raise ManifestError(
            "Manifest path %r would be written outside %s (through a symlink?); refusing."
            % (rel, dest)
        )
    return path


def download_tree(
    storage: Storage,
    manifest: Manifest,
    dest: str,
    opts: TransferOptions,
    progress: Optional[Progress] = None,
) -> int:
    """Materialise ``manifest`` under the directory ``dest``; return bytes written.

    Files are written to temp names and renamed into place only after every blob has been
    fetched and verified, so a failed load leaves no partially written file behind.
    """
    progress = progress or _no_progress
    # Validate every target before touching the destination: a bad path writes nothing.
    resolved: dict = {}
    dirs = [target_path(dest, d, resolved) for d in manifest.dirs]
    finals = [target_path(dest, entry.path, resolved) for entry in manifest.files]
    os.makedirs(dest, exist_ok=True)
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    temps: list[tuple[str, str, FileEntry]] = []
    by_blob: dict[str, list[tuple[str, FileEntry, int, ChunkRef]]] = {}
    try:
        made: set = set()
        for entry, final in zip(manifest.files, finals):
            parent = os.path.dirname(final)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            tmp = final + _TMP_SUFFIX + token
            # A file held by one slice (most files; every small one) is created by the worker
            # that has its bytes; only multi-chunk and empty files are created up front.
            if len(entry.chunks) != 1:
                with open(tmp, "wb") as f:
                    if entry.size:
                        f.truncate(entry.size)
            temps.append((tmp, final, entry))
            pos = 0
            for c in entry.chunks:
                by_blob.setdefault(c.blob, []).append((tmp, entry, pos, c))
                pos += c.length

        written = [0]
        lock = threading.Lock()

        def fetch(blob: str, uses: list) -> None:
            if _fetch_local(storage, manifest, blob, uses):
                done = sum(use[3].length for use in uses)
                with lock:
                    written[0] += done
                progress(done)
                return
            data = _fetch_verified(storage, manifest, blob, uses[0][1].path)
            view = memoryview(data)
            for tmp, entry, file_pos, c in uses:
                piece = view[c.offset : c.offset + c.length]
                _check_slice(manifest, blob, entry, piece, c.length)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    done = 0
                    while done < len(piece):
                        done += os.pwrite(fd, piece[done:], file_pos + done)
                finally:
                    os.close(fd)
                with lock:
                    written[0] += c.length
                progress(c.length)

        jobs = (lambda b=b, u=u: fetch(b, u) for b, u in by_blob.items())
        _run_bounded(jobs, opts.workers, opts.inflight)
        for tmp, final, entry in temps:
            os.chmod(tmp, entry.mode & 0o7777 or 0o644)
            os.replace(tmp, final)
        temps = []
        return written[0]
    finally:
        for tmp, _final, _entry in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
