"""Writes into a local store while a cleanup removes its empty directories (a tier's cleanup,
GC's deletes, closed leases: each removes only empty directories, in another process).  No
write fails and every object written is there (was: a save failed with FileNotFoundError
when a directory, or a parent between two of ``os.makedirs``' steps, vanished twice; seen
with 20 ``upload="end"`` tasks on one machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import digest
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

_CLEANER = r"""
import os, sys, time
root, stop = sys.argv[1], sys.argv[2]
while not os.path.exists(stop):
    for d, dirs, files in os.walk(root, topdown=False):
        if d != root and not dirs and not files:
            try:
                os.rmdir(d)
            except OSError:
                pass
"""


def test_writes_beside_a_cleanup_of_empty_directories_never_fail(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    stop = tmp_path / "stop"
    cleaner = subprocess.Popen([sys.executable, "-c", _CLEANER, str(root), str(stop)])
    rounds = 0
    try:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            # A new store object each round: nothing is known made, as in a new task.  Each
            # object is deleted once checked, so its directories empty and go, as a tier's
            # cleanup leaves them, and the next round makes them again.
            storage = LocalStorage(str(root))
            rounds += 1
            task = "u/F/train/%d/run/%d" % (rounds % 3, rounds % 5)
            keys = ["manifests/%s/m.json" % task, "metrics/%s/m.json" % task]
            storage.put_bytes(keys[0], b"manifest")
            storage.put_new(keys[1], b"{}")
            data = os.urandom(64)
            done = storage.ingest_filled(
                len(data), lambda fd, d=data: os.pwrite(fd, d, 0) and None, digest, blob_key
            )
            assert done is not None
            keys.append(blob_key(done[0]))
            assert [k for k in keys if not storage.exists(k)] == []
            storage.delete_many(keys)
    finally:
        stop.touch()
        cleaner.wait(30)
    assert rounds > 100
