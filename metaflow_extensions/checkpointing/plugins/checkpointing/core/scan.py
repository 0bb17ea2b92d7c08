"""What a save reads: the regular files and empty directories of a source path.

Rules (docs/concepts.md, "What is saved"):

* a symlink to a file is saved as the file's content; a symlink to a directory is followed, so
  an alias such as ``latest -> checkpoint-1000/`` is saved again under the link's path (its
  blobs deduplicate, so it costs no storage).  Only a true cycle, a link to a directory that is
  already on the path being walked (itself or an ancestor), is cut: its content is saved once,
  under the ancestor;
* what cannot be read is an error naming the path, never a silent omission: an unreadable
  directory or file, a dangling symlink, a symlink loop (``a -> a``), an entry that vanishes
  while the tree is scanned.  Sockets, FIFOs and device files hold no data and are skipped;
* a file read for the save is checked, by one ``fstat`` on the descriptor read from, to be the
  one the scan saw (:func:`_read_into`, :func:`_copy_member`): a file written meanwhile fails
  the save;
* the package's own temporary names (:func:`.tempnames.is_temp_name`: files of a load in progress or
  killed, staging directories) are never saved.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from ..errors import CheckpointConfigError
from .tempnames import is_temp_name


def holds_data(directory: str) -> bool:
    """Whether a save of ``directory`` would hold anything (a file, or an empty directory).

    The package's temp names are not data, so a directory holding only the leftovers of a
    killed load counts as empty.  A directory that cannot be read counts as holding data."""
    stack = [directory]
    try:
        while stack:
            d = stack.pop()
            subdirs = 0
            temps = False
            with os.scandir(d) as it:
                for e in it:
                    if is_temp_name(e.name):
                        temps = True
                    elif e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        subdirs += 1
                    else:
                        return True
            if d != directory and not subdirs and not temps:
                return True  # an empty directory: a save keeps it
    except OSError:
        return True
    return False


def is_small(src: str, max_bytes: int, max_entries: int = 16) -> bool:
    """Whether ``src`` is a regular file of at most ``max_bytes``, or a directory of at most
    ``max_entries`` regular files (no subdirectory) holding that much in all.

    One ``stat`` per entry, no recursion: a cheap bound on what a save of ``src`` reads.
    Anything else (a subdirectory, more entries, an error) is not small."""
    try:
        top = os.stat(src)
        if stat.S_ISREG(top.st_mode):
            return top.st_size <= max_bytes
        if not stat.S_ISDIR(top.st_mode):
            return False
        total = 0
        with os.scandir(src) as it:
            for n, e in enumerate(it):
                st = e.stat()  # follows symlinks, as a save does
                total += st.st_size
                if n >= max_entries or total > max_bytes or not stat.S_ISREG(st.st_mode):
                    return False
    except OSError:
        return False
    return True


@dataclass
class _File:
    rel: str
    abs: str
    size: int
    mode: int
    # What identifies unchanged content for the stat cache (see StatCache) and detects a file
    # that changes while it is saved (see _check_unchanged).
    fingerprint: tuple = ()


def _fingerprint(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unreadable(path: str, exc: OSError, what: str) -> CheckpointConfigError:
    """The error for an entry of the source tree that cannot be read."""
    if exc.errno == errno.ELOOP:
        return CheckpointConfigError(
            "Cannot save %s: it is a symbolic link loop (it resolves to itself). Remove the link "
            "or point it at a real file or directory." % path
        )
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return CheckpointConfigError(
                "Cannot save %s: it is a symbolic link to %r, which does not exist. Remove the "
                "dangling link or make it point to an existing file." % (path, _readlink(path))
            )
        return CheckpointConfigError(
            "%s disappeared while save() was reading the directory; do not add or remove files "
            "while save() runs." % path
        )
    if isinstance(exc, PermissionError):
        return CheckpointConfigError(
            "Cannot save %s: permission denied reading this %s. Make it readable (chmod u+r%s) "
            "or move it out of the directory you save." % (path, what, "x" * (what == "directory"))
        )
    return CheckpointConfigError("Cannot save %s: cannot read this %s: %s." % (path, what, exc))


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _bad_name(path: str) -> None:
    # A manifest path must survive every store and platform (manifest.safe_relpath): refuse it
    # now, naming the file, rather than commit a checkpoint no load could read.
    raise CheckpointConfigError(
        "Cannot save %s: its name contains a backslash, which checkpoint paths cannot hold "
        "(it is a path separator on Windows). Rename it." % path
    )


# ---------------------------------------------------------------------------------------- scan
def scan(src: str) -> tuple[list[_File], list[str], str]:
    """List the regular files and empty directories of ``src`` (a file or a directory).

    Symlinks are followed (see the module docstring); a link to a directory on the current walk
    path is a cycle and is cut.  Returns (files sorted by path, empty dirs, "file" | "dir").

    Raises
    ------
    CheckpointConfigError
        ``src`` is missing, or an entry under it cannot be read (permission, dangling link,
        link loop) or vanishes while it is scanned.
    """
    try:
        top = os.stat(src)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.islink(src):
            raise CheckpointConfigError(
                "Cannot save %r: no such file or directory. Pass an existing path, or write "
                "your files into current.checkpoint.directory and call save() without a path." % src
            ) from exc
        raise _unreadable(src, exc, "path") from exc
    if stat.S_ISREG(top.st_mode):
        entry = _File(
            os.path.basename(src), src, top.st_size, stat.S_IMODE(top.st_mode), _fingerprint(top)
        )
        return [entry], [], "file"
    if not stat.S_ISDIR(top.st_mode):
        raise CheckpointConfigError("Cannot save %r: not a regular file or directory." % src)
    files: list[_File] = []
    # Depth-first with an explicit stack (no recursion limit on deep trees).  Each directory
    # carries the (device, inode) of every directory on its walk path, itself included.
    stack: list[tuple[str, str, frozenset]] = [(src, "", frozenset({(top.st_dev, top.st_ino)}))]
    visited: list[tuple[str, int, bool]] = []  # (rel dir, files in it, temp entries in it)
    while stack:
        path, rel_dir, walk_path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError as exc:
            raise _unreadable(path, exc, "directory") from exc
        nfiles = 0
        temps = False
        with it:
            try:
                for e in it:
                    name = e.name
                    if is_temp_name(name):
                        temps = True
                        continue
                    try:
                        st = e.stat()  # follows symlinks
                    except PermissionError as exc:
                        # Listed but not searchable: the directory lacks the x bit (or a link's
                        # target lies behind one that does).
                        culprit = e.path if e.is_symlink() else path
                        raise _unreadable(culprit, exc, "directory") from exc
                    except OSError as exc:
                        raise _unreadable(e.path, exc, "file") from exc
                    mode = st.st_mode
                    if "\\" in name:
                        _bad_name(e.path)
                    if stat.S_ISREG(mode):
                        files.append(
                            _File(
                                rel_dir + name,
                                e.path,
                                st.st_size,
                                stat.S_IMODE(mode),
                                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                            )
                        )
                        nfiles += 1
                    elif stat.S_ISDIR(mode):
                        ident = (st.st_dev, st.st_ino)
                        if ident in walk_path:
                            continue  # a cycle: this directory's content is saved once, above
                        stack.append((e.path, rel_dir + name + "/", walk_path | {ident}))
                    # else: socket, FIFO, device: no data to save
            except OSError as exc:  # reading the directory itself failed part-way
                raise _unreadable(path, exc, "directory") from exc
        visited.append((rel_dir, nfiles, temps))
    files.sort(key=lambda f: f.rel)
    return files, _empty_dirs(visited), "dir"


def _empty_dirs(visited: list[tuple[str, int, bool]]) -> list[str]:
    """The directories to record as empty, from the walk in visiting order.

    A directory is saved if it holds a saved file or directory, or nothing at all; one that
    holds only temp entries of the package (a killed load's leftovers) is not.  Children come
    after their parent in a depth-first visit, so the reverse order sees them first."""
    saved_children: dict[str, int] = {}
    leftover: set[str] = set()
    empty = []
    for rel_dir, nfiles, temps in reversed(visited):
        if not rel_dir:
            break  # the root, visited first: not an entry of the checkpoint
        parent = rel_dir[: rel_dir.rstrip("/").rfind("/") + 1]
        children = saved_children.get(rel_dir, 0)
        if nfiles or children or not (temps or rel_dir in leftover):
            saved_children[parent] = saved_children.get(parent, 0) + 1
            if not nfiles and not children:
                empty.append(rel_dir[:-1])
        else:
            leftover.add(parent)
    return sorted(empty)


# ------------------------------------------------------------------------- reading sources
def _read_into(f: _File, offset: int, view: memoryview) -> None:
    """Fill ``view`` with the bytes of ``f`` at ``offset``; fail if ``f`` is no longer the file
    :func:`.scan.scan` saw (one ``fstat`` after the read, on the descriptor read from)."""
    try:
        fd = os.open(f.abs, os.O_RDONLY)
    except OSError as exc:
        raise _unreadable(f.abs, exc, "file") from exc
    try:
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        st = os.fstat(fd)
    except OSError as exc:
        raise _unreadable(f.abs, exc, "file") from exc
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != f.fingerprint or (
        got < len(view)
    ):
        _check_unchanged(f, st, ended_early=got < len(view))


def _check_unchanged(f: _File, st: os.stat_result, ended_early: bool = False) -> None:
    """Raise if ``st`` shows that ``f`` changed since the scan: its inode, size, modification or
    change time differ (it was replaced, grew, shrank or was written to)."""
    _dev, ino, size, mtime_ns, ctime_ns = f.fingerprint
    if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (ino, size, mtime_ns, ctime_ns):
        if not ended_early:
            return  # only the device number differs (fstat and stat may disagree on it)
        how = "it ended early"
    elif st.st_ino != ino:
        how = "it was replaced by another file"
    elif st.st_size != size:
        how = "it %s from %d to %d bytes" % (
            "grew" if st.st_size > size else "shrank",
            size,
            st.st_size,
        )
    else:
        how = "it was written to"
    raise CheckpointConfigError(
        "%s changed while save() was reading it (%s), so the checkpoint would not hold one "
        "consistent version of it. Finish writing files before calling save(), or save a copy."
        % (f.abs, how)
    )


def _check_source(f: _File, failed: bool = False) -> None:
    """Check by path that ``f`` is unchanged after the backend's fast path read it.

    With ``failed`` (the fast path raised), also report a file that cannot be read: the
    backend wraps every ``OSError`` in a ``StorageError``, which would blame the store."""
    try:
        st = os.stat(f.abs)
    except OSError as exc:
        raise _unreadable(f.abs, exc, "file") from exc
    _check_unchanged(f, st)
    effective = os.access in os.supports_effective_ids
    if failed and not os.access(f.abs, os.R_OK, effective_ids=effective):
        raise _unreadable(f.abs, PermissionError(errno.EACCES, "Permission denied"), "file")
