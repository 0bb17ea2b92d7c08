"""A load's destination: what is in the way, temp names and locks, and the final renames.

Everything here happens on the local filesystem a load writes to (:mod:`.download` fetches and
verifies the bytes):

* :func:`plan` looks at the destination once and raises for anything in the way (a file where
  the checkpoint has a directory, or the reverse) before anything is changed;
* each load holds a lock while it has temp files (``.mfckpt-part-<token>-<n>``, names from
  :mod:`.tempnames`); the next load removes the leftovers of loads that died
  (:mod:`.load_locks`);
* :func:`place` writes a slice's non-zero runs into its file (:func:`data_runs`: all-zero
  blocks stay holes, so sparse files stay sparse), opened by :meth:`Job.open_file`;
* :func:`commit_renames` renames every temp file into place and, if a rename fails, puts back
  what was replaced: a load applies completely or not at all.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import CheckpointConfigError, ManifestError, StorageError
from .load_locks import unlink_quietly
from .manifest import FileEntry, Manifest, safe_relpath
from .tempnames import PART, PART_PREFIX
from .uninterrupted import deferred_signals

#: All-zero blocks of this size are left as holes (sparse files stay sparse).
_HOLE_BLOCK = 64 << 10
_ZEROS = bytes(_HOLE_BLOCK)
#: Slices shorter than this are written whole (a hole smaller than a page saves nothing).
_MIN_HOLE = 4096
#: How a load opens (creating) the files it writes: never through a symlink.
CREATE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW


def target_path(dest: str, rel: str, cache: Optional[dict] = None, links: bool = True) -> str:
    """Join a validated manifest path to ``dest``, refusing anything that escapes it.

    ``cache`` memoises resolved parent directories, so a load of many files resolves each
    directory once; an existing symlink at the final component is still resolved and refused
    if it points outside ``dest`` (``links=False``: ``dest`` is a new, empty directory, there
    is none to look for; files are then created with ``O_NOFOLLOW``).
    """
    safe_relpath(rel)
    # rel is validated, "/"-separated and relative (POSIX only): plain concatenation is
    # os.path.join here, at a tenth of its cost (it was 5% of a load of 10,000 small files).
    path = (dest if dest.endswith(os.sep) else dest + os.sep) + rel
    cache = {} if cache is None else cache
    parent, _sep, name = path.rpartition(os.sep)
    parent = parent or os.sep
    for d in (dest, parent):
        if d not in cache:
            cache[d] = os.path.realpath(d)
    root, real_parent = cache[dest], cache[parent]
    real = (real_parent if real_parent.endswith(os.sep) else real_parent + os.sep) + name
    if links and os.path.islink(path):
        real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise ManifestError(
            "Manifest path %r would be written outside %s (through a symlink?); refusing."
            % (rel, dest)
        )
    return path


def mode_of(manifest: Manifest, entry: FileEntry) -> int:
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
class Job:
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
    #: One lock per directory, held while a small file is written there (see download.py).
    dir_locks: dict[str, threading.Lock] = field(default_factory=dict)
    #: ``dest`` is a directory this load made and nothing else writes into (a staging
    #: directory, renamed into place by its caller): files are written at their final names.
    fresh: bool = False
    #: The permission bits each file gets (:func:`mode_of`).
    modes: list[int] = field(default_factory=list)
    #: Which files a fresh load created so far: each is created once, exclusively.
    created: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        # str.rpartition: os.path.dirname per file cost ~1% of a load of many small files.
        self.parents = [f.rpartition(os.sep)[0] or os.sep for f in self.finals]
        if self.fresh:
            # No temp names, no renames: a rename into a directory of 10,000 files costs as
            # much as creating the file (ext4), and the caller's one rename of ``dest``
            # publishes everything at once.
            self.temps = list(self.finals)
        else:
            stem = os.sep + PART_PREFIX + self.token + "-"
            self.temps = [parent + stem + str(i) for i, parent in enumerate(self.parents)]
        self.dir_locks = {parent: threading.Lock() for parent in set(self.parents)}
        self.created = [False] * len(self.finals)

    def open_file(self, i: int, flags: int = 0) -> int:
        """A descriptor to write file ``i`` (its temp file; in a fresh load, its final name).

        Never through a symbolic link (``O_NOFOLLOW``).  A fresh load creates each file once,
        exclusively (``O_EXCL``: a name that exists already, two checkpoint paths one file on
        a filesystem that folds case, or a file another process put there, fails the load
        instead of mixing bytes), with its own permission bits plus the owner's read and write
        (set with ``fchmod``, whatever the umask or a default ACL); :func:`commit_renames`
        takes those two away where the checkpoint's mode lacks them."""
        path = self.temps[i]
        if not self.fresh:
            return os.open(path, CREATE | flags, 0o600)
        if self.created[i]:
            return os.open(path, os.O_WRONLY | os.O_NOFOLLOW | flags)
        mode = self.modes[i] | 0o600
        try:
            fd = os.open(path, CREATE | os.O_EXCL | flags, mode)
        except FileExistsError:
            raise StorageError(
                "Loading checkpoint %s into %s: %s exists already. Two of its paths name one "
                "file on this filesystem (it folds case or normalises names), or another "
                "process writes into the load's directory. Load into a directory on a "
                "case-sensitive filesystem." % (self.manifest.key, self.dest, path),
                key=self.manifest.key,
                path=path,
                reason="the file exists already",
            ) from None
        self.created[i] = True
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def hold(self) -> DirHold:
        """A holder of one directory lock at a time, for a run of writes (see :class:`DirHold`)."""
        return DirHold(self)

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


class DirHold:
    """Holds the lock of one directory of a :class:`Job` across consecutive writes into it.

    A pack's members mostly share a directory: one acquire per run of them, not per file (with
    a lock taken per file, 10,000 x 4 KiB spent 13% of a load's CPU in futex wake-ups of the
    other workers waiting for it)."""

    def __init__(self, job: Job):
        self.job = job
        self.held: Optional[threading.Lock] = None

    def enter(self, i: int) -> None:
        """Hold the lock of file ``i``'s directory (releasing another one held)."""
        lock = self.job.dir_locks[self.job.parents[i]]
        if lock is not self.held:
            self.release()
            lock.acquire()
            self.held = lock

    def release(self) -> None:
        """Release the lock held, if any."""
        if self.held is not None:
            self.held.release()
            self.held = None

    def __enter__(self) -> DirHold:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def plan(job: Job, dirs: list[str]) -> None:
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


def commit_renames(job: Job) -> None:
    """Rename every temp file into place; on a failure, put back what was replaced.  A
    ``fresh`` job's files are already in place with their modes (:meth:`Job.open_file`):
    only those whose mode lacks the owner's read or write are changed."""
    # Whole or not at all, also when a signal arrives meanwhile (Ctrl-C, a task's SIGTERM):
    # its handler runs once the renames, or their undoing, are done.
    with deferred_signals():
        _commit_renames(job)


def _commit_renames(job: Job) -> None:
    i: Optional[int] = None
    backups: dict[int, str] = {}
    modes = job.modes
    try:
        if job.fresh:
            for i, path in enumerate(job.temps):
                if modes[i] & 0o600 != 0o600:
                    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                    try:
                        os.fchmod(fd, modes[i])
                    finally:
                        os.close(fd)
            return
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
        job.stuck |= not all([unlink_quietly(b) for b in backups.values()])


# ------------------------------------------------------------------------ writing temp files
def data_runs(piece: memoryview) -> list[tuple[int, int]]:
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


def place(
    opener: Callable[[], int],
    extend_to: int,
    piece: memoryview,
    copy: Callable[[int, int, int], None],
) -> None:
    """Write the non-zero runs of ``piece`` into the file ``opener()`` opens through
    ``copy(fd, start, length)``; with ``extend_to`` > 0, make the file that long if the last
    run ends before (a hole)."""
    n = len(piece)
    fd = opener()
    try:
        if n < _MIN_HOLE or (n <= _HOLE_BLOCK and (piece[0] or piece[-1] or piece[n // 2])):
            copy(fd, 0, n)  # small or one block of data: no hole to look for
            return
        end = 0
        for start, length in data_runs(piece):
            copy(fd, start, length)
            end = start + length
        if extend_to and end < n:
            os.ftruncate(fd, extend_to)
    finally:
        os.close(fd)
