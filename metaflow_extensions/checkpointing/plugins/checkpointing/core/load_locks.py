"""The locks of loads, and removing what loads that died left behind.

A load holds a :class:`Lock` (a lock file ``.mfckpt-part-<token>`` in its destination) while
it has temp files there or in a staging directory (names from :mod:`.tempnames`); the next
load removes the temp files (:func:`remove_leftovers`) and staging directories
(:func:`remove_dead_staging`) of loads whose lock the kernel released because they died.
The Hub cache (:mod:`..frameworks.hub`) uses the same locks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from typing import Optional

from .tempnames import LOCK, PART_PREFIX, STAGING


class Lock:
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
                unlink_quietly(self.path)
            # After the unlink (the lock covers the removal); forgotten first, as a failed
            # close has released it anyway (storage/local.py's ingest_filled says why).
            closing, self.fd = self.fd, -1
            os.close(closing)


def take_dead_lock(path: str) -> Optional[int]:
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


def remove_leftovers(dest: str, token: str, leftovers: dict[str, list[str]]) -> None:
    """Remove the temp files of dead loads found in ``dest`` while planning the load
    ``token`` (``leftovers``: token -> paths; see :class:`Lock`)."""
    for other, paths in leftovers.items():
        if other == token:
            continue
        lock_path = os.path.join(dest, PART_PREFIX + other)
        fd = take_dead_lock(lock_path)
        if fd is None:
            continue
        try:
            for path in paths:
                if path != lock_path:
                    unlink_quietly(path)
            unlink_quietly(lock_path)
        finally:
            os.close(fd)


def remove_dead_staging(parent: str) -> None:
    """Remove the staging directories (``.mfckpt-load-*``) in ``parent`` of loads that died.

    A staging directory is removed only when it holds the lock file of a dead load (see
    :class:`Lock`); one without (killed before its download began) is left alone: scans skip
    it anyway."""
    try:
        with os.scandir(parent) as it:
            candidates = [
                e.path for e in it if STAGING.match(e.name) and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return
    for staging in candidates:
        remove_if_dead(staging)


def remove_if_dead(directory: str) -> bool:
    """Remove ``directory`` (a staging or download directory) if it holds the lock file of a
    load that died (see :class:`Lock`); True if it was removed."""
    try:
        with os.scandir(directory) as it:
            locks = [e.path for e in it if LOCK.match(e.name)]
    except OSError:
        return False
    for lock in locks:
        fd = take_dead_lock(lock)
        if fd is not None:
            try:
                shutil.rmtree(directory, ignore_errors=True)
            finally:
                os.close(fd)
            return True
    return False


def unlink_quietly(path: str) -> bool:
    """Remove ``path``; False if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
