"""A close that fails is never retried on the same descriptor.

``close(2)`` releases the descriptor even when it reports an error (EIO or EDQUOT of a delayed
write on NFS).  Closing the number again fails with EBADF, which hides the real error, or, with
other threads opening files meanwhile (saves and loads use thread pools), closes a file that
is no longer ours.  The fault is injected as the kernel makes it: the descriptor is closed,
then the error is raised.
"""

from __future__ import annotations

import errno
import hashlib
import os
import types

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import load_locks
from metaflow_extensions.checkpointing.plugins.checkpointing.core.tempnames import is_temp_name
from metaflow_extensions.checkpointing.plugins.checkpointing.storage import local
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage


class FailingClose:
    """``os`` as seen by one module, whose next ``close`` releases the descriptor and then
    fails with EIO; every descriptor closed is recorded."""

    def __init__(self, module):
        self.module, self.real = module, module.os
        self.closed: list[int] = []
        self.armed = True
        proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if k[:2] != "__"})
        proxy.close = self.close
        self.proxy = proxy

    def close(self, fd: int) -> None:
        self.closed.append(fd)
        os.close(fd)
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, "Input/output error (a delayed write failed)")

    def __enter__(self) -> FailingClose:
        self.module.os = self.proxy
        return self

    def __exit__(self, *exc) -> None:
        self.module.os = self.real


def _sha(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def test_a_blob_whose_close_fails_reports_the_failure_and_leaves_no_temp_file(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    with FailingClose(local) as fault, pytest.raises(OSError) as err:
        storage.ingest_filled(
            4096,
            lambda fd: os.pwrite(fd, b"z" * 4096, 0) and None,
            _sha,
            lambda h: "blobs/" + h,
        )
    assert err.value.errno == errno.EIO  # the real error, not EBADF from a second close
    assert len(fault.closed) == len(set(fault.closed)), "a descriptor was closed twice"
    left = [n for _d, _ds, ns in os.walk(tmp_path / "store") for n in ns]
    assert not [n for n in left if is_temp_name(n)], left
    # Nothing was published under the failed write: the next save writes it again.
    assert not storage.exists("blobs/" + _sha(b"z" * 4096))


def test_a_load_lock_whose_close_fails_is_not_closed_again(tmp_path):
    lock = load_locks.Lock(str(tmp_path), "0123456789ab")
    with FailingClose(load_locks) as fault:
        with pytest.raises(OSError) as err:
            lock.release()
        assert err.value.errno == errno.EIO
        lock.release()  # what a caller's cleanup does next: nothing left to close
    assert len(fault.closed) == 1, "the lock's descriptor was closed twice"
    assert not os.path.exists(lock.path)
