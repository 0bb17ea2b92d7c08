"""In-kernel copies, read-only mappings and hashed piece copies: the OS helpers the transfer
pipelines share.

The local backend stages an uploaded file range with :func:`copy_hashing`: 1 MiB pieces read
into a per-thread buffer, hashed and written while they are in the CPU's cache.  On 2 CPUs
that costs 25-30% less CPU than :func:`copy_range` (in the kernel) and then a hash of the copy
through :func:`map_readonly`, which reads every byte back from memory (benchmarks README,
"Hash while copying"); the in-kernel copy is kept where the filesystem clones.  A load from a
local store verifies a blob through a mapping and copies its slices into the destination files.
Callers fall back to copying through memory when the kernel cannot (:data:`UNSUPPORTED_COPY`).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import Protocol


def map_readonly(fd: int, length: int) -> mmap.mmap:
    """Map ``length`` bytes of ``fd`` read-only, pre-faulted where the OS allows: hashing a
    mapping page-fault by page-fault is twice as slow as hashing a populated one."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, length, flags=flags, prot=mmap.PROT_READ)


#: copy_file_range errors that mean "not possible here" (old kernel, across devices, a
#: filesystem without support): callers fall back to copying through memory.
UNSUPPORTED_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def can_copy_range() -> bool:
    """Whether this platform has ``copy_file_range`` (Linux): else callers copy in Python."""
    return hasattr(os, "copy_file_range")


def _ended_early(what: str, missing: int) -> OSError:
    return OSError(errno.EIO, "%s ended %d bytes early (modified while copied?)" % (what, missing))


def copy_range(
    src_fd: int, dst_fd: int, length: int, src_off: int, dst_off: int, what: str
) -> None:
    """Copy ``length`` bytes between two file descriptors in the kernel (``copy_file_range``).

    Raises OSError(EIO) naming ``what`` if the source ends early (it shrank while being read).
    """
    done = 0
    while done < length:
        n = os.copy_file_range(src_fd, dst_fd, length - done, src_off + done, dst_off + done)
        if n == 0:
            raise _ended_early(what, length - done)
        done += n


class Hasher(Protocol):
    """An incremental hash: what :func:`copy_hashing` feeds."""

    def update(self, data: memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


#: Size of the pieces :func:`copy_hashing` and the pack writer stage: they fit in a core's L2
#: cache (2 MiB here), so the hash and the write read them from there, not from memory.
PIECE = 1 << 20

_local = threading.local()


def piece_buffer() -> memoryview:
    """This thread's staging buffer of :data:`PIECE` bytes (made once per thread, reused: a
    new one per piece would be paged in, and out, again)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(PIECE))
    return buf


def write_all(fd: int, data: memoryview, pos: int) -> None:
    """``pwrite`` all of ``data`` at ``pos`` (a write may be short)."""
    while data:
        n = os.pwrite(fd, data, pos)
        data = data[n:]
        pos += n


def copy_hashing(
    src_fd: int, dst_fd: int, length: int, src_off: int, dst_off: int, hasher: Hasher, what: str
) -> None:
    """Copy ``length`` bytes between two file descriptors through :func:`piece_buffer`,
    feeding each piece to ``hasher`` before it is written: the digest is of the bytes written.

    Raises OSError(EIO) naming ``what`` if the source ends early (it shrank while being read).
    """
    buf = piece_buffer()
    done = 0
    while done < length:
        n = os.preadv(src_fd, [buf[: min(PIECE, length - done)]], src_off + done)
        if n == 0:
            raise _ended_early(what, length - done)
        piece = buf[:n]
        hasher.update(piece)
        write_all(dst_fd, piece, dst_off + done)
        done += n
