"""Local filesystem backend (Metaflow's local datastore, NFS mounts, any directory)."""

from __future__ import annotations

import base64
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import Optional, TypeVar

from .base import NOT_FOUND, PERMANENT, TRANSIENT, Buffer, ObjectInfo, Storage, validate_key
from .clone import clone_range
from .oscopy import (
    UNSUPPORTED_COPY,
    can_copy_range,
    copy_hashing,
    copy_range,
    map_readonly,
    write_all,
)

T = TypeVar("T")

# Temp files of in-flight writes start with this; listings never show them.
_TMP_PREFIX = ".mfckpt-tmp-"


_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def temp_file(directory: str) -> tuple[int, str]:
    """Create a new temp file ``.mfckpt-tmp-<8 random characters>`` in ``directory``, as
    ``tempfile.mkstemp`` does (exclusive, mode 0600, open for reading and writing): its fd and
    path.  A third of mkstemp's cost (its Python name generator): a 4 KiB save makes three.

    Raises
    ------
    FileNotFoundError
        ``directory`` does not exist.
    FileExistsError
        100 random names in a row were taken.
    """
    for _ in range(100):
        name = base64.b32encode(os.urandom(5)).decode("ascii").lower()  # 8 of [a-z2-7]
        path = directory + os.sep + _TMP_PREFIX + name
        try:
            return os.open(path, _CREATE_FLAGS, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


#: put_new: created here or failing (never through a link someone put at the key).
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _writing(data: Buffer) -> Callable[[int], None]:
    """What writes all of ``data`` into a file descriptor (at its start)."""
    return lambda fd: write_all(fd, memoryview(data).cast("B"), 0)


def open_object(path: str) -> int:
    """Open a stored object for reading; return the file descriptor.

    The object must be a regular file: a symlink or a FIFO/device put into the store by hand
    would make a read follow it out of the store or block forever (``O_NOFOLLOW`` and
    ``O_NONBLOCK``, then ``fstat``).  Such an entry raises ``OSError(ELOOP)`` naming the path;
    a directory raises ``IsADirectoryError`` (a key prefix: the object is missing).
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        fd = -1
    mode = os.fstat(fd).st_mode if fd >= 0 else 0
    if stat.S_ISREG(mode):
        return fd
    if fd >= 0:
        os.close(fd)
    if stat.S_ISDIR(mode):  # a key prefix, not an object: missing, as on object stores
        raise IsADirectoryError(errno.EISDIR, "a directory, not an object", path)
    raise OSError(
        errno.ELOOP,
        "not a regular file (a symbolic link, FIFO or device put there by hand?); objects in a "
        "checkpoint store are plain files: remove it, then run `metaflow checkpoint verify`",
        path,
    )


def _is_object(path: str) -> bool:
    """A regular file, not following a final symlink (a link is never a stored object)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _may_hold(directory: str, prefix: str) -> bool:
    """Whether keys under ``directory`` (a key prefix ending in '/') can start with ``prefix``."""
    return directory.startswith(prefix) or prefix.startswith(directory)


def _walk_error(exc: OSError) -> None:
    """``os.walk`` error handler: a listing fails closed.

    ``os.walk`` silently skips a directory it cannot read unless told otherwise, and a skipped
    directory looks like one without checkpoints to load policies, retention and GC.  Only a
    directory that does not exist (the prefix names nothing yet, or it was removed while being
    listed) or a prefix that names a file is an empty listing.
    """
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return
    raise exc


class LocalStorage(Storage):
    """Objects are files under ``root``; writes go to a temp file and are renamed into place.

    Parameters
    ----------
    root : str
        Directory that holds the store (created on first write).
    fsync : bool
        Flush file data to disk before the rename.  Off by default, like Metaflow's own local
        datastore: a process crash never leaves a torn object either way (rename is atomic); an
        OS crash or power loss can lose unsynced data without ``fsync``.
    """

    TYPE = "local"

    def __init__(self, root: str, fsync: bool = False, **kwargs):
        super().__init__(os.path.abspath(os.path.expanduser(root)), **kwargs)
        self.root = self.url
        self.fsync = fsync
        self._made: set[str] = set()
        # Keys are relative '/' paths without empty, '.' or '..' parts (validate_key): one
        # concatenation makes the path (os.path.join of their parts cost a 4 KiB save 10 us).
        self._prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep

    def full_url(self, key: str) -> str:
        return self._path(key)

    def _path(self, key: str) -> str:
        return self._prefix + key

    def _classify(self, exc: BaseException) -> str:
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return NOT_FOUND
        if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EINTR, errno.ESTALE):
            return TRANSIENT
        return PERMANENT

    def _atomic(self, key: str, write: Callable[[int], None]) -> None:
        """Write the object at ``key`` through ``write(fd)`` into a temp file beside it, then
        rename it into place: a reader sees the whole object or none."""
        path = self._path(key)
        directory = os.path.dirname(path)
        fd, tmp = self._temp_in(directory)
        try:
            self._finish(fd, write)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _finish(self, fd: int, write: Callable[[int], None]) -> None:
        """``write(fd)`` (on the fd: a file object costs a manifest three syscalls more), then
        ``fsync`` if set and mode 0644 whatever the umask; ``fd`` is closed either way."""
        try:
            write(fd)
            if self.fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)

    def _put_bytes(self, key: str, data: Buffer) -> None:
        self._atomic(key, _writing(data))

    def _put_new(self, key: str, data: Buffer) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        fd = self._into(directory, lambda: os.open(path, _NEW_FLAGS, 0o644))
        try:
            self._finish(fd, _writing(data))
        except BaseException:
            try:
                os.unlink(path)  # not left half written where it can be helped
            except OSError:
                pass
            raise

    def _put_file(self, key: str, local_path: str) -> None:
        with open(local_path, "rb") as src:  # first: a missing source makes nothing

            def copy(fd: int) -> None:
                with open(fd, "wb", closefd=False) as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)

            self._atomic(key, copy)

    def _temp_in(self, directory: str) -> tuple[int, str]:
        """:func:`temp_file` in ``directory`` (:meth:`_into`)."""
        return self._into(directory, lambda: temp_file(directory))

    #: Tries of an entry whose directory keeps vanishing before it is in (see :meth:`_into`).
    DIRECTORY_TRIES = 20

    def _into(self, directory: str, make: Callable[[], T]) -> T:
        """``make()``, which puts an entry into ``directory``: the directory made first (once
        per process: a makedirs was ~8% of a local save done per blob), and made again each
        time it vanished before the entry was in.  Cleanups remove the empty directories of
        a tier, of GC's deletes and of closed leases (only empty ones: once the entry is in,
        the directory stays), and may do so between any two steps of this one, including
        between two ``mkdir`` of ``os.makedirs`` (was: the save failed with
        FileNotFoundError, seen with 20 ``upload="end"`` tasks on one machine)."""
        for attempt in range(self.DIRECTORY_TRIES):
            last = attempt == self.DIRECTORY_TRIES - 1
            try:
                if attempt or directory not in self._made:
                    os.makedirs(directory, exist_ok=True)
                    self._made.add(directory)
                return make()
            except FileNotFoundError:
                if last:
                    raise
        raise AssertionError("unreachable")

    def local_path(self, key: str) -> Optional[str]:
        validate_key(key)  # callers open this path directly, without the checks of get_bytes
        return self._path(key)

    def ingest_range(
        self,
        src: str,
        offset: int,
        length: int,
        digest: Callable[[Buffer], str],
        key_for: Callable[[str], str],
    ) -> Optional[tuple[str, bool]]:
        # Where the filesystem clones (XFS, btrfs), the staged blob shares the source's blocks
        # and is hashed through a mapping.  Elsewhere 1 MiB pieces are hashed as they are
        # copied, while in the CPU's cache: a copy in the kernel and then a hash of the copy
        # reads every byte back from memory (25-30% more CPU, oscopy's docstring).  Either way
        # the digest is of the bytes as stored.
        if length <= 0 or not can_copy_range():
            return None
        new = getattr(digest, "new", None)

        def fill(fd: int) -> Optional[str]:
            with open(src, "rb") as fin:
                s = fin.fileno()
                cloned = clone_range(s, fd, offset, length, 0, os.fstat(s).st_size)
                if cloned or new is None:
                    if cloned < length:
                        copy_range(s, fd, length - cloned, offset + cloned, cloned, what=src)
                    return None
                hasher = new()
                copy_hashing(s, fd, length, offset, 0, hasher, what=src)
                return hasher.hexdigest()

        return self.ingest_filled(length, fill, digest, key_for)

    def ingest_filled(
        self,
        length: int,
        fill: Callable[[int], Optional[str]],
        digest: Callable[[Buffer], str],
        key_for: Callable[[str], str],
    ) -> Optional[tuple[str, bool]]:
        if length <= 0 or not can_copy_range():
            return None
        fd, tmp = self._temp_in(self.root)
        try:
            try:
                h = fill(fd)  # the digest, when fill hashed what it wrote
            except OSError as exc:
                if exc.errno in UNSUPPORTED_COPY:
                    return None  # finally removes tmp; caller falls back
                raise
            if h is None:
                try:
                    mapped = map_readonly(fd, length)
                except OSError:  # no mmap here (FUSE direct_io, some network filesystems)
                    return None  # finally removes tmp; the caller reads through memory
                with mapped as view:
                    h = digest(view)
            if self.fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o644)
            # Forgotten before the close: a close that fails (EIO of a delayed write on NFS)
            # has released it all the same, and closing it again in ``finally`` could close
            # a descriptor another thread has since been given.
            closing, fd = fd, -1
            os.close(closing)
            path = self._path(key_for(h))
            if _is_object(path):
                return h, False
            self._into(os.path.dirname(path), lambda: os.replace(tmp, path))
            tmp = ""
            return h, True
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _get_bytes(self, key: str, start: int, length: Optional[int]) -> bytes:
        with os.fdopen(open_object(self._path(key)), "rb") as f:
            if start:
                f.seek(start)
            return f.read() if length is None else f.read(length)

    def _get_file(self, key: str, local_path: str) -> None:
        with os.fdopen(open_object(self._path(key)), "rb") as src, open(local_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)

    def _exists(self, key: str) -> bool:
        return _is_object(self._path(key))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk the deepest directory the prefix names, then filter on the raw prefix.
        base = prefix if prefix.endswith("/") or not prefix else prefix.rsplit("/", 1)[0] + "/"
        if "/" not in prefix.rstrip("/") and not prefix.endswith("/"):
            base = ""
        top = self._path(base.rstrip("/")) if base else self.root
        for dirpath, dirs, files in os.walk(top, onerror=_walk_error):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            # Enter only directories that can hold matching keys: a raw prefix "a/b" walks
            # "a/", and its unrelated siblings are neither read nor a reason to fail.
            dirs[:] = [d for d in dirs if _may_hold(rel_dir + d + "/", prefix)]
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = rel_dir + name
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted while listing
                # Any other error (EACCES on a directory without search permission, EIO)
                # propagates: a listing fails closed.
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def _delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
