"""Load: blobs -> verified files.

Load fetches each blob once, verifies its hash (fetching again once on a mismatch: a flip in
transit is not corruption at rest), writes its slices into temp files beside their final
names, and renames every file into place only when all of them are complete.

What a load guarantees (docs/concepts.md, "What is saved"):

* every conflict with what the destination already holds (a file where the checkpoint has a
  directory, a directory where it has a file) is found before anything is changed; a failure
  later (disk full) undoes the renames already done, so a load applies completely or not at all;
* temp names are short (``.mfckpt-part-<token>-<n>``, never the final name plus a suffix), so
  file names up to the filesystem's limit load; :func:`.tempnames.is_temp_name` knows them, so a
  save never picks up the leftovers of a killed load, and the next load into the same directory
  removes them (a lock file held by each load tells dead leftovers from a running load's);
* all-zero blocks are not written: sparse files stay sparse;
* modes are restored within ``0o777`` (no setuid, setgid or sticky bit);
* the destination filesystem failing (full, over quota, read-only) is a ``StorageError``
  naming the path.

This module fetches, verifies and writes the bytes (from a local store on a filesystem that
clones, large files' chunks are cloned into place: :mod:`..storage.clone`); looking at the
destination, temp names, locks, hole-preserving writes and the final renames are
:mod:`.destination`.
"""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from typing import Optional

from ..errors import (
    CheckpointIncomplete,
    CheckpointIntegrityError,
    StorageNotFound,
)
from ..storage.base import Storage
from ..storage.clone import clone_capable, clone_range
from ..storage.local import open_object
from ..storage.oscopy import UNSUPPORTED_COPY, can_copy_range, copy_range, map_readonly
from .codec import DecodeError, decode, require, split
from .destination import (
    Job,
    Lock,
    commit_renames,
    data_runs,
    mode_of,
    place,
    plan,
    remove_dead_staging,
    remove_leftovers,
    target_path,
    unlink_quietly,
)
from .layout import blob_key
from .manifest import ChunkRef, FileEntry, Manifest
from .transfer import Progress, TransferOptions, _no_progress, _run_bounded, digest

#: Slices of a local store at least this long are cloned where the filesystem can (a large
#: file's chunks); shorter ones, and packs of small files, are copied: as fast, and a clone of
#: a few blocks only fragments the file.
_MIN_CLONE = 64 << 10


# ---------------------------------------------------------------------------------------- load
def blob_end(manifest: Manifest, blob: str) -> int:
    """The plain length of ``blob`` that ``manifest`` needs: the end of its last slice (a save
    references every byte of each blob it writes)."""
    return max(
        (c.offset + c.length for f in manifest.files for c in f.chunks if c.blob == blob), default=0
    )


def _fetch_verified(
    storage: Storage, manifest: Manifest, blob: str, what: str, expected: int
) -> bytes:
    """The plain bytes of the stored blob ``blob``, decoded (:mod:`.codec`, never more than the
    ``expected`` bytes the manifest needs) and checked against its hash; fetched once more on a
    mismatch."""
    key = blob_key(blob)
    h, codec = split(blob)
    problem = "does not match its BLAKE3 hash"
    for _attempt in (0, 1):  # a flip in transit is not corruption at rest: fetch once more
        try:
            data = storage.get_bytes(key)
        except StorageNotFound as exc:
            raise CheckpointIncomplete(
                "Checkpoint %s is incomplete: blob %s (data of %s) is missing from %s."
                % (manifest.key, blob, what, storage.url),
                key=manifest.key,
                path=what,
                url=storage.url,
                reason="blob %s is missing" % blob,
            ) from exc
        if codec is not None:
            try:
                data = decode(codec, data, expected)
            except DecodeError as exc:
                problem = "is not a valid %s object: %s" % (codec, exc)
                del data  # the second fetch must not hold the first
                continue  # as a hash mismatch: fetch once more, then report it
            problem = "decompresses to bytes that do not match its BLAKE3 hash"
        if digest(data) == h:
            return data
        del data  # the second fetch must not hold the first (a compressed blob's plain bytes)
    raise CheckpointIntegrityError(
        "Checkpoint %s: file %s failed verification (blob %s %s). The stored data is corrupt; "
        "load another checkpoint." % (manifest.key, what, blob, problem),
        key=manifest.key,
        path=what,
        reason="blob %s %s" % (blob, problem),
    )


def _check_slice(manifest: Manifest, blob: str, entry: FileEntry, piece, length: int) -> None:
    if len(piece) != length:
        raise CheckpointIntegrityError(
            "Checkpoint %s: blob %s is shorter than the manifest says (file %s)."
            % (manifest.key, blob, entry.path),
            key=manifest.key,
            path=entry.path,
            reason="blob %s is shorter than the manifest says" % blob,
        )
    if entry.digest is not None and digest(piece) != entry.digest:
        raise CheckpointIntegrityError(
            "Checkpoint %s: file %s does not match its recorded hash." % (manifest.key, entry.path),
            key=manifest.key,
            path=entry.path,
        )


def _extend_to(entry: FileEntry) -> int:
    # Files of one slice are created by the worker holding it; others were sized up front.
    return entry.size if len(entry.chunks) == 1 else 0


#: One slice to write: (file index, position in the file, the slice of the blob).
_Use = tuple[int, int, ChunkRef]


def _fetch_local(
    storage: Storage, manifest: Manifest, blob: str, uses: list[_Use], job: Job
) -> bool:
    """Fast path for stores of plain local files: verify the blob through mmap and copy its
    slices in the kernel.  False when not applicable or the blob does not verify (the generic
    path then re-reads it and reports the error)."""
    if "." in blob:
        return False  # stored encoded: decoded by the generic path
    path = storage.local_path(blob_key(blob))
    if path is None or not can_copy_range():
        return False
    try:
        fd = open_object(path)
    except OSError:
        return False  # the generic path reports it
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        mapped = map_readonly(fd, size)
        try:
            return _copy_mapped(manifest, blob, uses, job, fd, path, mapped)
        finally:
            try:
                mapped.close()
            except BufferError:
                pass  # a traceback still holds a slice of it: unmapped when that is freed
    finally:
        os.close(fd)


#: Where a slice went before its blob was verified: the (file position, length) ranges written
#: into the temp file, or None when the slice is left to the copy path.
_Cloned = tuple[_Use, Optional[list[tuple[int, int]]]]


def _clone_uses(uses: list[_Use], job: Job, fd: int, path: str, view: memoryview) -> list[_Cloned]:
    """Clone the slices of the blob mapped in ``view`` that are the whole blob (a large file's
    chunks, never a pack of small files) into their temp files (:mod:`..storage.clone`).

    Only the data runs are cloned: all-zero blocks stay holes, as on the copy path (a blob may
    hold its zeros as written blocks).  What a run's clone leaves (a partial last block inside
    the file) is copied from the same blob."""
    done: list[_Cloned] = []
    size = len(view)
    for use in uses:
        i, file_pos, c = use
        written: Optional[list[tuple[int, int]]] = None
        if c.offset == 0 and c.length == size >= _MIN_CLONE:
            try:
                written = _clone_runs(fd, job.temps[i], file_pos, view, path)
                end = written[-1][0] + written[-1][1] if written else file_pos
                # Sized only if its last blocks are holes: a truncate to the same size would
                # unshare the last, partial block on XFS.
                if (
                    written is not None
                    and end < file_pos + size
                    and _extend_to(job.manifest.files[i])
                ):
                    os.truncate(job.temps[i], _extend_to(job.manifest.files[i]))
            except OSError as exc:
                raise job.write_error(exc, i) from exc
        done.append((use, written))
    return done


def _clone_runs(
    fd: int, tmp: str, file_pos: int, view: memoryview, path: str
) -> Optional[list[tuple[int, int]]]:
    """Clone the non-zero runs of the whole blob ``view`` to ``file_pos`` of ``tmp``; None when
    its first run does not clone (no reflink here, or not aligned): the copy path takes it."""
    size = len(view)
    written: list[tuple[int, int]] = []
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for start, length in data_runs(view):
            n = clone_range(fd, out, start, length, file_pos + start, size)
            if n == 0 and not written:
                return None
            written.append((file_pos + start, length))
            if n < length:
                try:
                    copy_range(fd, out, length - n, start + n, file_pos + start + n, what=path)
                except OSError as exc:
                    if exc.errno not in UNSUPPORTED_COPY:
                        raise
                    with view[start + n : start + length] as rest:
                        put = 0
                        while put < len(rest):
                            put += os.pwrite(out, rest[put:], file_pos + start + n + put)
        return written
    finally:
        os.close(out)


def _unclone(job: Job, i: int, ranges: list[tuple[int, int]]) -> None:
    """Zero the ranges written into temp file ``i`` before its blob failed verification: the
    generic path that rewrites it leaves all-zero blocks unwritten."""
    try:
        with open(job.temps[i], "r+b", buffering=0) as f:
            if _extend_to(job.manifest.files[i]):
                f.truncate(0)  # the file's one slice: the generic path re-creates it
                return
            for pos, n in ranges:
                zeros = bytes(min(n, 1 << 20))
                for off in range(0, n, len(zeros)):
                    os.pwrite(f.fileno(), zeros[: min(len(zeros), n - off)], pos + off)
    except OSError as exc:
        raise job.write_error(exc, i) from exc


def _copy_mapped(
    manifest: Manifest, blob: str, uses: list[_Use], job: Job, fd: int, path: str, mapped
) -> bool:
    with memoryview(mapped) as view:
        # Clone first, verify after: the hash is taken over the stored blob (its page cache)
        # once the clones exist, so bytes the blob held when cloned and were changed since
        # fail it too (ADR 001, "Reflink loads").
        cloned = _clone_uses(uses, job, fd, path, view)
        if digest(view) != blob:
            for (i, _pos, _c), ranges in cloned:
                if ranges:
                    _unclone(job, i, ranges)
            return False
        for (i, file_pos, c), ranges in cloned:
            with view[c.offset : c.offset + c.length] as piece:
                _check_slice(manifest, blob, manifest.files[i], piece, c.length)
                if ranges is not None:
                    continue

                try:
                    _place(job, i, file_pos, piece, c.length < len(view), (fd, c.offset, path))
                except OSError as exc:
                    if exc.errno in UNSUPPORTED_COPY:
                        return False
                    raise job.write_error(exc, i) from exc
    return True


def _place(
    job: Job, i: int, pos: int, piece: memoryview, member: bool, source: Optional[tuple] = None
) -> None:
    """Write the verified ``piece`` (at ``pos`` of file ``i``) into its temp file, all-zero
    blocks left as holes, with ``pwrite``: from a local store's mapping that is 25% less CPU
    than ``copy_file_range`` on ext4.  A large file's chunk from a local store (``source``: the
    blob's fd, the slice's offset, its path) uses ``copy_file_range`` where the filesystems may
    clone (XFS, btrfs clone even a chunk too short for :func:`_clone_uses`).  A pack ``member``
    is written holding its directory's lock: threads creating files in one directory contend
    (10,000 x 4 KiB loaded 2x slower with 2-8 threads than with one); hashing stays parallel.
    """

    def copy(out: int, start: int, n: int) -> None:
        if source is not None and not member and clone_capable(source[0], out):
            copy_range(source[0], out, n, source[1] + start, pos + start, what=source[2])
            return
        with piece[start : start + n] as part:  # released at once: the mapping closes after
            done = 0
            while done < n:
                done += os.pwrite(out, part[done:], pos + start + done)

    with job.dir_lock(i) if member else nullcontext():
        place(job.temps[i], _extend_to(job.manifest.files[i]), piece, copy)


# ---------------------------------------------------------------------------------- download
def download_tree(
    storage: Storage,
    manifest: Manifest,
    dest: str,
    opts: TransferOptions,
    progress: Optional[Progress] = None,
) -> int:
    """Materialise ``manifest`` under the directory ``dest``; return bytes written.

    Files are written to temp names and renamed into place only after every blob has been
    fetched and verified; anything in ``dest`` in the way is reported before any change, and a
    failure while renaming restores what was replaced.  So a load applies completely or not at
    all.  Files already in ``dest`` that the checkpoint does not have are left alone.

    Raises
    ------
    CheckpointConfigError
        ``dest`` is a file, or has a file where the checkpoint has a directory (or the reverse).
    StorageError
        Writing ``dest`` failed (disk full, quota, permissions); the message names the path.
    """
    progress = progress or _no_progress
    # Validate every target and look at the destination before touching it.
    resolved: dict = {}
    dirs = [target_path(dest, d, resolved) for d in manifest.dirs]
    finals = [target_path(dest, entry.path, resolved) for entry in manifest.files]
    modes = [mode_of(manifest, entry) for entry in manifest.files]
    job = Job(manifest, dest, finals)
    plan(job, dirs)

    made: list[str] = []
    lock: Optional[Lock] = None
    created: list[str] = []  # temps that may exist
    done = False
    try:
        current = dest
        try:
            for current in job.make:
                os.makedirs(current, exist_ok=True)
                made.append(current)
            current = dest
            lock = Lock(dest, job.token)
        except OSError as exc:
            raise job.write_error(exc, path=current) from exc
        remove_leftovers(job)

        by_blob: dict[str, list[_Use]] = {}
        for i, entry in enumerate(manifest.files):
            created.append(job.temps[i])
            # A file of one slice (most; every small one) is created by the worker holding its
            # bytes; only multi-chunk and empty files are created (sized, all holes) up front.
            if len(entry.chunks) != 1:
                try:
                    fd = os.open(job.temps[i], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        if entry.size:
                            os.ftruncate(fd, entry.size)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    raise job.write_error(exc, i) from exc
            pos = 0
            for c in entry.chunks:
                by_blob.setdefault(c.blob, []).append((i, pos, c))
                pos += c.length

        written = [0]
        counter = threading.Lock()

        def fetch(blob: str, uses: list[_Use]) -> None:
            if _fetch_local(storage, manifest, blob, uses, job):
                n = sum(use[2].length for use in uses)
                with counter:
                    written[0] += n
                progress(n)
                return
            end = max(c.offset + c.length for _i, _p, c in uses)  # every use of it: all of it
            data = _fetch_verified(storage, manifest, blob, manifest.files[uses[0][0]].path, end)
            view = memoryview(data)
            for i, file_pos, c in uses:
                entry = manifest.files[i]
                piece = view[c.offset : c.offset + c.length]
                _check_slice(manifest, blob, entry, piece, c.length)

                try:
                    _place(job, i, file_pos, piece, c.length < len(view))
                except OSError as exc:
                    raise job.write_error(exc, i) from exc
                with counter:
                    written[0] += c.length
                progress(c.length)

        for codec in {split(b)[1] for b in by_blob if "." in b}:
            require(codec)  # a missing package fails before any blob is fetched
        jobs = (lambda b=b, u=u: fetch(b, u) for b, u in by_blob.items())
        _run_bounded(jobs, opts.workers, opts.inflight)
        commit_renames(job, modes)
        done = True
        return written[0]
    finally:
        if not done:
            job.stuck |= not all([unlink_quietly(tmp) for tmp in created])
        if lock is not None:
            lock.release(keep=job.stuck)
        if not done:
            for d in reversed(made):  # only directories this load created, if still empty
                try:
                    os.rmdir(d)
                except OSError:
                    pass


__all__ = ["download_tree", "remove_dead_staging", "target_path"]
