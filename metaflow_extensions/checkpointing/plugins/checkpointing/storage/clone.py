"""Reflink clones: a file range shared with a stored blob instead of a copy of its bytes.

On filesystems that can clone (XFS made with ``reflink=1``, btrfs, bcachefs, OCFS2; overlayfs
over one of them), ``ioctl(FICLONERANGE)`` makes a range of one file refer to the same disk
blocks as a range of another, copy-on-write: it takes microseconds whatever the size, uses no
space, and a later write to either file changes only that file.  A load from a local store clones
the large chunks it verified into the files it writes (:mod:`..core.download`).

Everywhere else (ext4, tmpfs, NFS, two filesystems) :func:`clone_range` returns 0 and the
caller copies.  Whether a pair of filesystems clones is learnt once per ``(source device,
destination device)`` and remembered for the process, so a filesystem that cannot clone costs
one failed ioctl, not one per chunk.

Clones need block-aligned ranges: the source and destination offsets must be multiples of the
filesystem block size, and so must the length, except for a range that ends at the source's
end (a file's last, partial block may be cloned onto the end of the destination).
:func:`clone_range` clones the aligned part it can and returns how many bytes that was; the
caller copies the rest.

:func:`shared_bytes` reads a file's extent map (``FS_IOC_FIEMAP``) and counts the bytes the
filesystem marks shared with another file: how tests and the benchmark see that a load cloned.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading

#: ``_IOW(0x94, 13, struct file_clone_range)`` and ``_IOW(0x94, 9, int)`` (linux/fs.h).
FICLONERANGE = 0x4020940D
FICLONE = 0x40049409
#: ``_IOWR('f', 11, struct fiemap)`` (linux/fs.h) and the extent flags it reports.
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000

_RANGE = struct.Struct("=qQQQ")  # struct file_clone_range: src_fd, src_offset, length, dest_offset
_FIEMAP = struct.Struct("=QQIIII")  # struct fiemap without its extents
_EXTENT = struct.Struct("=QQQQQIIII")  # struct fiemap_extent (56 bytes)

#: Errors that mean "these two files cannot share blocks" (no reflink on this filesystem, two
#: filesystems, no such ioctl here): remembered per device pair, the caller copies.
NO_CLONE = (
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.ENOSYS,
    errno.EPERM,
    errno.EACCES,
)
#: Errors of one attempt only (a range the filesystem refuses, e.g. not aligned to its blocks,
#: or an unaligned tail in the middle of the destination): copy this range, try the next.
REFUSED = (errno.EINVAL, errno.EBADF, errno.ETXTBSY)

_capable: dict[tuple[int, int], bool] = {}
_lock = threading.Lock()
_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn cloning on or off for this process (on by default); off, :func:`clone_range`
    always returns 0.  The benchmark uses it to time the copy path on a filesystem that clones.
    """
    global _enabled
    _enabled = bool(enabled)


def clone_capable(src_fd: int, dst_fd: int) -> bool:
    """False once a clone between these two files' filesystems failed as unsupported (one
    ioctl per pair of devices per process); True while none did."""
    if not _enabled or not hasattr(fcntl, "ioctl"):
        return False
    return _capable.get(_pair(src_fd, dst_fd), True)


def _pair(src_fd: int, dst_fd: int) -> tuple[int, int]:
    return os.fstat(src_fd).st_dev, os.fstat(dst_fd).st_dev


def block_size(fd: int) -> int:
    """The allocation block size of ``fd``'s filesystem: the unit a clone range must align to."""
    try:
        return max(os.fstatvfs(fd).f_bsize, 512)
    except OSError:
        return 4096


def clone_range(
    src_fd: int, dst_fd: int, src_off: int, length: int, dst_off: int, src_size: int
) -> int:
    """Make ``length`` bytes of ``dst_fd`` at ``dst_off`` share the blocks of ``src_fd`` at
    ``src_off``; return how many bytes were cloned from the start of the range (0 where this
    filesystem cannot clone or the range does not align).

    Parameters
    ----------
    src_fd, dst_fd : int
        Open descriptors (source readable, destination writable) of regular files.
    src_off, length, dst_off : int
        The range.  Offsets must be multiples of the block size; a length that is not is
        cloned whole only when the range ends at the source's end (``src_size``), otherwise
        rounded down to whole blocks (the caller copies the rest).
    src_size : int
        The source file's size.

    Raises
    ------
    OSError
        The destination failed otherwise (full, quota, I/O error): the caller reports it.
    """
    if length <= 0 or not clone_capable(src_fd, dst_fd):
        return 0
    bs = block_size(dst_fd)
    if src_off % bs or dst_off % bs:
        return 0
    attempts = [length] if length % bs == 0 else []
    if length % bs and src_off + length == src_size:
        attempts.append(length)  # the source's last partial block: allowed at the end
    if length % bs and length >= bs:
        attempts.append(length - length % bs)
    for n in attempts:
        try:
            fcntl.ioctl(dst_fd, FICLONERANGE, _RANGE.pack(src_fd, src_off, n, dst_off))
            return n
        except OSError as exc:
            if exc.errno in NO_CLONE:
                with _lock:
                    _capable[_pair(src_fd, dst_fd)] = False
                return 0
            if exc.errno not in REFUSED:
                raise
    return 0


def shared_bytes(path: str) -> int:
    """Bytes of ``path`` in extents its filesystem marks shared (``FIEMAP_EXTENT_SHARED``):
    blocks a clone shares with another file.  0 where the filesystem has no extent map or
    shares nothing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        total, start, count = 0, 0, 256
        while True:
            buf = bytearray(_FIEMAP.size + count * _EXTENT.size)
            _FIEMAP.pack_into(buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, count, 0)
            try:
                fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    return 0
                raise
            mapped = _FIEMAP.unpack_from(buf, 0)[3]
            if not mapped:
                return total
            for k in range(mapped):
                logical, _phys, n, _r1, _r2, flags, *_ = _EXTENT.unpack_from(
                    buf, _FIEMAP.size + k * _EXTENT.size
                )
                if flags & FIEMAP_EXTENT_SHARED:
                    total += n
                if flags & FIEMAP_EXTENT_LAST:
                    return total
                start = logical + n
    finally:
        os.close(fd)
