"""Load from a local store: verify a blob through a read-only mapping and write its slices.

The fast path of :mod:`.download` for stores of plain local files (:meth:`.Storage.local_path`):
a large file's chunks are cloned into place where the filesystem can (:mod:`..storage.clone`),
other slices are written with ``pwrite`` from the blob's mapping; the blob is hashed after its
slices are written, so bytes changed in the store meanwhile fail it, and the generic path
(:func:`.download.download_tree`'s fetch) rewrites what it wrote.  Also the helpers both paths
share: slice checks (:func:`_check_slice`) and hole-preserving writes (:func:`_place`).
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import CheckpointIntegrityError
from ..storage.base import Storage
from ..storage.clone import clone_capable, clone_range
from ..storage.local import open_object
from ..storage.oscopy import (
    PIECE,
    UNSUPPORTED_COPY,
    can_copy_range,
    copy_range,
    map_readonly,
    write_all,
)
from .destination import DirHold, Job, data_runs, place
from .layout import blob_key
from .manifest import ChunkRef, FileEntry, Manifest
from .transfer import digest

#: Slices of a local store at least this long are cloned where the filesystem can (a large
#: file's chunks); shorter ones, and packs of small files, are copied: as fast, and a clone of
#: a few blocks only fragments the file.
_MIN_CLONE = 64 << 10


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
        try:
            mapped = map_readonly(fd, os.fstat(fd).st_size)
        except (OSError, ValueError):  # no mmap here (FUSE direct_io), or empty: generic path
            return False
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
    chunks, never a pack of small files) into their files (:mod:`..storage.clone`).

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
                written = _clone_runs(fd, job, i, file_pos, view, path)
            except OSError as exc:
                raise job.write_error(exc, i) from exc
        done.append((use, written))
    return done


def _clone_runs(
    fd: int, job: Job, i: int, file_pos: int, view: memoryview, path: str
) -> Optional[list[tuple[int, int]]]:
    """Clone the non-zero runs of the whole blob ``view`` to ``file_pos`` of file ``i``; None
    when its first run does not clone (no reflink here, or not aligned): the copy path takes
    it."""
    size = len(view)
    written: list[tuple[int, int]] = []
    out = job.open_file(i)
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
                        write_all(out, rest, file_pos + start + n)
        end = written[-1][0] + written[-1][1] if written else file_pos
        # Sized only if its last blocks are holes: a truncate to the same size would unshare
        # the last, partial block on XFS.
        if end < file_pos + size and _extend_to(job.manifest.files[i]):
            os.ftruncate(out, _extend_to(job.manifest.files[i]))
        return written
    finally:
        os.close(out)


class _Follow:
    """The digest of ``piece``, fed in order as its parts are written (:func:`_place`); the
    parts not written from it (holes, kernel copies) are hashed from ``piece`` itself."""

    def __init__(self, piece: memoryview):
        self.piece = piece
        self.pos = 0
        self.hasher = digest.new()

    def add(self, start: int, part: memoryview) -> None:
        self._upto(start)
        self.hasher.update(part)
        self.pos = start + len(part)

    def hexdigest(self) -> str:
        self._upto(len(self.piece))
        return self.hasher.hexdigest()

    def _upto(self, end: int) -> None:
        for off in range(self.pos, end, PIECE):
            with self.piece[off : min(off + PIECE, end)] as part:
                self.hasher.update(part)
        self.pos = max(self.pos, end)


def _unclone(job: Job, i: int, ranges: list[tuple[int, int]]) -> None:
    """Zero the ranges written into temp file ``i`` before its blob failed verification: the
    generic path that rewrites it leaves all-zero blocks unwritten."""
    try:
        fd = os.open(job.temps[i], os.O_RDWR | os.O_NOFOLLOW)
        try:
            if _extend_to(job.manifest.files[i]):
                os.ftruncate(fd, 0)  # the file's one slice: the generic path rewrites it
                return
            for pos, n in ranges:
                zeros = bytes(min(n, 1 << 20))
                for off in range(0, n, len(zeros)):
                    write_all(fd, memoryview(zeros)[: n - off], pos + off)
        finally:
            os.close(fd)
    except OSError as exc:
        raise job.write_error(exc, i) from exc


def _copy_mapped(
    manifest: Manifest, blob: str, uses: list[_Use], job: Job, fd: int, path: str, mapped
) -> bool:
    with memoryview(mapped) as view:
        # Write first, verify after: the hash is taken over the stored blob (its page cache)
        # once every slice is in its temp file, cloned or copied, so bytes the blob held when
        # written and were changed since (another process writing it) fail it too (ADR 001,
        # "Reflink loads"); written ranges of a blob that fails are zeroed for the generic path.
        done = _clone_uses(uses, job, fd, path, view)
        ok = True
        # A large file's chunk (the blob's one use) is hashed piece by piece just after each
        # piece is written, while in the CPU's cache: a second pass over the mapping reads it
        # from memory again (5-8% of a load's CPU).  Not pack members: they are written
        # holding their directory's lock, and their hashes run in parallel after it.
        follow = (
            len(done) == 1
            and done[0][0][2].offset == 0
            and done[0][0][2].length == len(view)
            and not _per_file(manifest, done)
        )
        hashed: Optional[str] = None
        with job.hold() as hold:
            for k, ((i, file_pos, c), ranges) in enumerate(done):
                if ranges is None and ok:
                    done[k] = (done[k][0], [])
                    with view[c.offset : c.offset + c.length] as piece:
                        hasher = _Follow(piece) if follow else None
                        try:
                            _place(
                                job,
                                i,
                                file_pos,
                                piece,
                                c.length < len(view),
                                hold,
                                done[k][1],
                                (fd, c.offset, path),
                                hasher,
                            )
                        except OSError as exc:
                            if exc.errno not in UNSUPPORTED_COPY:
                                raise job.write_error(exc, i) from exc
                            ok = False  # the kernel refused copy_file_range: the generic path
                        if hasher is not None:
                            hashed = hasher.hexdigest()
        if not ok or not _verified(manifest, blob, done, view, hashed):
            for (i, _pos, _c), ranges in done:
                if ranges:
                    _unclone(job, i, ranges)
            return False
    return True


def _per_file(manifest: Manifest, done: list[_Cloned]) -> bool:
    """Whether every slice is a whole file with its own recorded digest (a pack's members)."""
    files = manifest.files
    return all(files[i].digest is not None and len(files[i].chunks) == 1 for (i, _p, _c), _ in done)


def _verified(
    manifest: Manifest, blob: str, done: list[_Cloned], view: memoryview, hashed: Optional[str]
) -> bool:
    """Whether the bytes written from ``view`` are the saved ones (``hashed``: the blob's
    digest, taken as its one slice was written, when :func:`_copy_mapped` did).

    A pack of whole files, each with its own recorded digest, is checked file by file: that
    covers every byte written, and hashing the pack as well would read them all twice (a
    sixth of a load of 256 KiB files).  Anything else is checked against the blob's name, then
    each slice against the manifest (:func:`_check_slice` raises: the manifest disagrees with
    a sound blob)."""
    files = manifest.files
    if _per_file(manifest, done):
        for (i, _pos, c), _ranges in done:
            with view[c.offset : c.offset + c.length] as piece:
                if len(piece) != c.length or digest(piece) != files[i].digest:
                    return False  # the generic path fetches it again and says what is wrong
        return True
    if (hashed or digest(view)) != blob:
        return False
    for (i, _pos, c), _ranges in done:
        with view[c.offset : c.offset + c.length] as piece:
            _check_slice(manifest, blob, files[i], piece, c.length)
    return True


def _place(
    job: Job,
    i: int,
    pos: int,
    piece: memoryview,
    member: bool,
    hold: DirHold,
    written: Optional[list] = None,
    source: Optional[tuple] = None,
    hasher: Optional[_Follow] = None,
) -> None:
    """Write ``piece`` (at ``pos`` of file ``i``) into its temp file, all-zero blocks left as
    holes, with ``pwrite``: from a local store's mapping that is 25% less CPU than
    ``copy_file_range`` on ext4; each (position, length) written is added to ``written``.  A
    large file's chunk from a local store (``source``: the blob's fd, the slice's offset, its
    path) uses ``copy_file_range`` where the filesystems may clone (XFS, btrfs clone even a
    chunk too short for :func:`_clone_uses`).  A pack ``member`` is written holding its
    directory's lock (through ``hold``, which keeps it across a run of members of one
    directory): threads creating files in one directory contend (10,000 x 4 KiB loaded 2x
    slower with 2-8 threads than with one); hashing stays parallel.  ``hasher`` hashes each
    :data:`.oscopy.PIECE` just after it is written (:class:`_Follow`)."""

    def copy(out: int, start: int, n: int) -> None:
        if written is not None:
            written.append((pos + start, n))  # before: a failed write is zeroed too
        if source is not None and not member and clone_capable(source[0], out):
            copy_range(source[0], out, n, source[1] + start, pos + start, what=source[2])
            return
        step = PIECE if hasher is not None else max(n, 1)
        for off in range(start, start + n, step):
            with piece[off : min(off + step, start + n)] as part:  # released: the map closes
                write_all(out, part, pos + off)
                if hasher is not None:
                    hasher.add(off, part)

    def opener() -> int:
        fd = job.open_file(i)
        if len(piece) >= _MIN_CLONE:
            hold.release()  # creating the file is what contends, not writing 64 KiB into it
        return fd

    if member:
        hold.enter(i)
    place(opener, _extend_to(job.manifest.files[i]), piece, copy)
