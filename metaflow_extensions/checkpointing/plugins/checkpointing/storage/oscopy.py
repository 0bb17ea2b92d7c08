"""In-kernel copies and read-only mappings: the OS helpers the transfer pipelines share.

The local backend stages an uploaded file range with :func:`copy_range` and hashes it through
:func:`map_readonly` (no byte crosses into Python); a load from a local store verifies a blob
through a mapping and copies its slices into the destination files with :func:`copy_range`.
Callers fall back to copying through memory when the kernel cannot (:data:`UNSUPPORTED_COPY`).
"""

from __future__ import annotations

import errno
import mmap
import os


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
            raise OSError(
                errno.EIO,
                "%s ended %d bytes early (modified while copied?)" % (what, length - done),
            )
        done += n
