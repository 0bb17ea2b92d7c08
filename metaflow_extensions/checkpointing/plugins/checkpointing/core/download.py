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
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import (
    CheckpointConfigError,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    ManifestError,
    StorageError,
    StorageNotFound,
)
from ..storage.base import Storage
from ..storage.local import open_object
from ..storage.oscopy import UNSUPPORTED_COPY, can_copy_range, copy_range, map_readonly
from .layout import blob_key
from .manifest import ChunkRef, FileEntry, Manifest, safe_relpath
from .tempnames import LOCK, PART, PART_PREFIX, STAGING
from .transfer import Progress, TransferOptions, _no_progress, _run_bounded, digest

#: All-zero blocks of this size are left as holes (sparse files stay sparse).
_HOLE_BLOCK = 64 << 10
_ZEROS = bytes(_HOLE_BLOCK)
#: Slices shorter than this are written whole (a hole smaller than a page saves nothing).
_MIN_HOLE = 4096


# ---------------------------------------------------------------------------------------- load
def _fetch_verified(storage: Storage, manifest: Manifest, blob: str, what: str) -> bytes:
    key = blob_key(blob)
    for attempt in (0, 1):
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
        if digest(data) == blob:
            return data
        if attempt == 0:
            continue  # a flip in transit is not corruption at rest: fetch once more
    raise CheckpointIntegrityError(
        "Checkpoint %s: file %s failed verification (blob %s does not match its BLAKE3 hash). "
        "The stored data is corrupt; load another checkpoint." % (manifest.key, what, blob),
        key=manifest.key,
        path=what,
        reason="blob %s does not match its hash" % blob,
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


def _data_runs(piece: memoryview) -> list[tuple[int, int]]:
    """(start, length) of the parts of ``piece`` to write: all-zero blocks are skipped.

    A block is compared in full only when its first, middle and last bytes are zero, so data
    that is not mostly zeros costs three byte reads per 64 KiB."""
    n = len(piece)
    if n < _MIN_HOLE:
        return [(0, n)]
    runs: list[tuple[int, int]] = []
    start = -1
    for off in range(0, n, _HOLE_BLOCK):
        end = min(off + _HOLE_BLOCK, n)
        block = piece[off:end]
        zero = (
            block[0] == 0
            and block[-1] == 0
            and block[(end - off) // 2] == 0
            and block.tobytes() == (_ZEROS if end - off == _HOLE_BLOCK else bytes(end - off))
        )
        if zero:
            if start >= 0:
                runs.append((start, off - start))
                start = -1
        elif start < 0:
            start = off
    if start >= 0:
        runs.append((start, n - start))
    return runs


def _place(
    tmp: str, extend_to: int, piece: memoryview, copy: Callable[[int, int, int], None]
) -> None:
    """Write the non-zero runs of ``piece`` into ``tmp`` through ``copy(fd, start, length)``;
    with ``extend_to`` > 0, make the file that long if the last run ends before (a hole)."""
    n = len(piece)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if n < _MIN_HOLE or (n <= _HOLE_BLOCK and (piece[0] or piece[-1] or piece[n // 2])):
            copy(fd, 0, n)  # small or one block of data: no hole to look for
            return
        end = 0
        for start, length in _data_runs(piece):
            copy(fd, start, length)
            end = start + length
        if extend_to and end < n:
            os.ftruncate(fd, extend_to)
    finally:
        os.close(fd)


def _extend_to(entry: FileEntry) -> int:
    # Files of one slice are created by the worker holding it; others were sized up front.
    return entry.size if len(entry.chunks) == 1 else 0


#: One slice to write: (file index, position in the file, the slice of the blob).
_Use = tuple[int, int, ChunkRef]


def _fetch_local(
    storage: Storage, manifest: Manifest, blob: str, uses: list[_Use], job: _Job
) -> bool:
    """Fast path for stores of plain local files: verify the blob through mmap and copy its
    slices in the kernel.  False when not applicable or the blob does not verify (the generic
    path then re-reads it and reports the error)."""
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


def _copy_mapped(
    manifest: Manifest, blob: str, uses: list[_Use], job: _Job, fd: int, path: str, mapped
) -> bool:
    with memoryview(mapped) as view:
        if digest(view) != blob:
            return False
        for i, file_pos, c in uses:
            entry = manifest.files[i]
            with view[c.offset : c.offset + c.length] as piece:
                _check_slice(manifest, blob, entry, piece, c.length)

                def copy(out: int, start: int, n: int, c=c, file_pos=file_pos) -> None:
                    copy_range(fd, out, n, c.offset + start, file_pos + start, what=path)

                try:
                    _place(job.temps[i], _extend_to(entry), piece, copy)
                except OSError as exc:
                    if exc.errno in UNSUPPORTED_COPY:
                        return False
                    raise job.write_error(exc, i) from exc
    return True


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
        raise ManifestError(
            "Manifest path %r would be written outside %s (through a symlink?); refusing."
            % (rel, dest)
        )
    return path


def _mode(manifest: Manifest, entry: FileEntry) -> int:
    """The permission bits to give a loaded file: its saved mode within 0o777."""
    mode = entry.mode
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        raise ManifestError(
            "Checkpoint %s: file %s has the invalid mode %r; refusing to load it."
            % (manifest.key, entry.path, mode)
        )
    return mode & 0o777  # never setuid, setgid or sticky: a checkpoint is data


# ------------------------------------------------------------------------ destination planning
@dataclass
class _Job:
    """One load's view of its destination, decided before anything is changed."""

    manifest: Manifest
    dest: str
    finals: list[str]
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: The directory of each final path.
    parents: list[str] = field(default_factory=list)
    #: Directories to create, parents first (the destination itself included if missing).
    make: list[str] = field(default_factory=list)
    #: Indices of files whose final path exists (replaced; restored if the load fails).
    replace: set[int] = field(default_factory=set)
    #: Temp paths of other loads found in the directories listed: token -> paths.
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    temps: list[str] = field(default_factory=list)
    #: Some temp file could not be removed: keep the lock file so a later load removes it.
    stuck: bool = False

    def __post_init__(self) -> None:
        # str.rpartition: os.path.dirname per file cost ~1% of a load of many small files.
        self.parents = [f.rpartition(os.sep)[0] or os.sep for f in self.finals]
        stem = os.sep + PART_PREFIX + self.token + "-"
        self.temps = [parent + stem + str(i) for i, parent in enumerate(self.parents)]

    def temp(self, i: int, backup: bool = False) -> str:
        """Temp name of file ``i`` (or of the backup of what it replaces), beside its target."""
        if not backup:
            return self.temps[i]
        return os.path.join(self.parents[i], "%s%s-b%d" % (PART_PREFIX, self.token, i))

    def write_error(self, exc: OSError, i: Optional[int] = None, path: str = "") -> StorageError:
        """The error for the destination failing while file ``i`` (or ``path``) is written."""
        path = path or (self.finals[i] if i is not None else self.dest)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "the filesystem is full or your disk quota is used up: free space, or load "
            hint += "into a directory on another filesystem"
        elif exc.errno == errno.EFBIG:
            hint = "the file is larger than this filesystem or the process's file size limit "
            hint += "(ulimit -f) allows"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "the destination is not writable: check its permissions, or load elsewhere"
        else:
            hint = "check the destination filesystem"
        return StorageError(
            "Loading checkpoint %s into %s failed writing %s: %s (%s). Nothing was changed in %s."
            % (self.manifest.key, self.dest, path, exc.strerror or exc, hint, self.dest),
            key=self.manifest.key,
            path=path,
            reason=str(exc.strerror or exc),
        )


def _plan(job: _Job, dirs: list[str]) -> None:
    """Fill ``job.make``/``replace``/``leftovers`` from one listing per existing directory, and
    raise if anything in the destination is in the way.  Changes nothing."""
    dest = job.dest
    needed: set[str] = set()
    for path in set(job.parents).union(dirs):
        while path != dest and path not in needed:
            needed.add(path)
            path = os.path.dirname(path)
    listing: dict[str, dict[str, os.DirEntry]] = {}
    state: dict[str, str] = {}
    conflicts: list[str] = []

    def read(d: str) -> None:
        try:
            with os.scandir(d) as it:
                entries = {e.name: e for e in it}
        except OSError as exc:
            raise job.write_error(exc, path=d) from exc
        listing[d] = entries
        for name in entries:
            m = PART.match(name) if name.startswith(PART_PREFIX) else None
            if m:
                job.leftovers.setdefault(m.group(1), []).append(os.path.join(d, name))

    if os.path.isdir(dest):
        state[dest] = "old"
        read(dest)
    elif os.path.lexists(dest):
        raise CheckpointConfigError("Cannot load into %s: it is not a directory." % dest)
    else:
        state[dest] = "new"
        job.make.append(dest)
    for d in sorted(needed, key=lambda p: p.count(os.sep)):
        parent = state[os.path.dirname(d)]
        if parent != "old":
            state[d] = parent  # below a new directory (or one in the way): nothing to look at
            if parent == "new":
                job.make.append(d)
            continue
        e = listing[os.path.dirname(d)].get(os.path.basename(d))
        if e is None:
            state[d] = "new"
            job.make.append(d)
        elif e.is_dir():  # follows a symlink (target_path keeps it inside dest)
            state[d] = "old"
            read(d)
        else:
            state[d] = "blocked"
            conflicts.append("%s is a file where the checkpoint has a directory" % d)
    if "old" not in state.values():
        return  # every file goes into a new directory: nothing can be in the way
    for i, final in enumerate(job.finals):
        parent = job.parents[i]
        if state[parent] != "old":
            continue
        e = listing[parent].get(os.path.basename(final))
        if e is None:
            continue
        if e.is_dir(follow_symlinks=False):
            conflicts.append("%s is a directory where the checkpoint has a file" % final)
        else:
            job.replace.add(i)
    if conflicts:
        shown = "; ".join(conflicts[:5])
        if len(conflicts) > 5:
            shown += "; and %d more" % (len(conflicts) - 5)
        raise CheckpointConfigError(
            "Cannot load checkpoint %s into %s: %d path%s in the way (%s). Nothing was changed. "
            "Remove or rename them, or load into an empty directory."
            % (
                job.manifest.key,
                dest,
                len(conflicts),
                "s are" if len(conflicts) > 1 else " is",
                shown,
            )
        )


# ------------------------------------------------------------------------------ load leftovers
class _Lock:
    """The lock file ``<dest>/.mfckpt-part-<token>`` a load holds (``flock``) while it has temp
    files; it holds one byte once locked.  A cleaner may remove another load's temp files only
    while it holds that load's lock and sees the byte, which only happens once the load died
    (the kernel releases the lock of a killed process)."""

    def __init__(self, dest: str, token: str):
        self.path = os.path.join(dest, PART_PREFIX + token)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:
                return  # no locks on this filesystem (e.g. NFS with nolock): never cleaned up
            os.write(self.fd, b"1")
        except BaseException:
            self.release()
            raise

    def release(self, keep: bool = False) -> None:
        """Give up the lock; ``keep`` leaves the lock file, marking temp files this load could
        not remove (a directory turned read-only) as a dead load's, for the next load to remove.
        """
        if self.fd >= 0:
            if not keep:
                _unlink_quietly(self.path)
            os.close(self.fd)  # after the unlink: the lock covers the removal
            self.fd = -1


def _take_dead_lock(path: str) -> Optional[int]:
    """A descriptor holding the lock file ``path`` if the load that made it is dead, else None."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None  # no lock here: not provably dead (its load may use another root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_size > 0:
            return fd
    except OSError:
        pass  # held: that load is running
    os.close(fd)
    return None


def _remove_leftovers(job: _Job) -> None:
    """Remove the temp files of dead loads found while planning (see :class:`_Lock`)."""
    for token, paths in job.leftovers.items():
        if token == job.token:
            continue
        lock_path = os.path.join(job.dest, PART_PREFIX + token)
        fd = _take_dead_lock(lock_path)
        if fd is None:
            continue
        try:
            for path in paths:
                if path != lock_path:
                    _unlink_quietly(path)
            _unlink_quietly(lock_path)
        finally:
            os.close(fd)


def remove_dead_staging(parent: str) -> None:
    """Remove the staging directories (``.mfckpt-load-*``) in ``parent`` of loads that died.

    A staging directory is removed only when it holds the lock file of a dead load (see
    :class:`_Lock`); one without (killed before its download began) is left alone: scans skip
    it anyway."""
    try:
        with os.scandir(parent) as it:
            candidates = [
                e.path for e in it if STAGING.match(e.name) and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return
    for staging in candidates:
        try:
            with os.scandir(staging) as it:
                locks = [e.path for e in it if LOCK.match(e.name)]
        except OSError:
            continue
        for lock in locks:
            fd = _take_dead_lock(lock)
            if fd is not None:
                try:
                    shutil.rmtree(staging, ignore_errors=True)
                finally:
                    os.close(fd)
                break


def _unlink_quietly(path: str) -> bool:
    """Remove ``path``; False if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


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
    modes = [_mode(manifest, entry) for entry in manifest.files]
    job = _Job(manifest, dest, finals)
    _plan(job, dirs)

    made: list[str] = []
    lock: Optional[_Lock] = None
    created: list[str] = []  # temps that may exist
    done = False
    try:
        current = dest
        try:
            for current in job.make:
                os.makedirs(current, exist_ok=True)
                made.append(current)
            current = dest
            lock = _Lock(dest, job.token)
        except OSError as exc:
            raise job.write_error(exc, path=current) from exc
        _remove_leftovers(job)

        by_blob: dict[str, list[_Use]] = {}
        for i, entry in enumerate(manifest.files):
            created.append(job.temps[i])
            # A file held by one slice (most files; every small one) is created by the worker
            # that has its bytes; only multi-chunk and empty files are created (sized, all
            # holes) up front.
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
            data = _fetch_verified(storage, manifest, blob, manifest.files[uses[0][0]].path)
            view = memoryview(data)
            for i, file_pos, c in uses:
                entry = manifest.files[i]
                piece = view[c.offset : c.offset + c.length]
                _check_slice(manifest, blob, entry, piece, c.length)

                def copy(fd: int, start: int, n: int, piece=piece, file_pos=file_pos) -> None:
                    put = 0
                    while put < n:
                        put += os.pwrite(fd, piece[start + put : start + n], file_pos + start + put)

                try:
                    _place(job.temps[i], _extend_to(entry), piece, copy)
                except OSError as exc:
                    raise job.write_error(exc, i) from exc
                with counter:
                    written[0] += c.length
                progress(c.length)

        jobs = (lambda b=b, u=u: fetch(b, u) for b, u in by_blob.items())
        _run_bounded(jobs, opts.workers, opts.inflight)
        _commit(job, modes)
        done = True
        return written[0]
    finally:
        if not done:
            job.stuck |= not all([_unlink_quietly(tmp) for tmp in created])
        if lock is not None:
            lock.release(keep=job.stuck)
        if not done:
            for d in reversed(made):  # only directories this load created, if still empty
                try:
                    os.rmdir(d)
                except OSError:
                    pass


def _commit(job: _Job, modes: list[int]) -> None:
    """Rename every temp file into place; on a failure, put back what was replaced."""
    i: Optional[int] = None
    backups: dict[int, str] = {}
    try:
        for i, tmp in enumerate(job.temps):
            os.chmod(tmp, modes[i])
        # A hard link of each file about to be replaced restores it if a later rename fails.
        for i in sorted(job.replace):
            try:
                os.link(job.finals[i], job.temp(i, backup=True))
            except FileNotFoundError:
                continue  # removed meanwhile: nothing to restore
            backups[i] = job.temp(i, backup=True)
        renamed: list[int] = []
        try:
            for i, tmp in enumerate(job.temps):
                os.replace(tmp, job.finals[i])
                renamed.append(i)
        except OSError:
            for j in reversed(renamed):
                try:
                    if j in backups:
                        os.replace(backups.pop(j), job.finals[j])
                    else:
                        os.unlink(job.finals[j])
                except OSError:
                    pass
            raise
    except OSError as exc:
        raise job.write_error(exc, i) from exc
    finally:
        job.stuck |= not all([_unlink_quietly(b) for b in backups.values()])
