"""GC removes the temp files a local-store writer killed mid-write left (``.mfckpt-tmp-*``,
never listed, so nothing else removes them), once older than the grace period, and never a
recent one (a live writer's, whose rename would then fail), even with ``grace_seconds=0``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from metaflow_extensions.checkpointing.plugins.checkpointing.core import verify
from metaflow_extensions.checkpointing.plugins.checkpointing.core.gc_temps import MIN_AGE
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, snapshot, write_tree

# A real writer: the local store's file upload (its primitive: the public put_file refuses a
# FIFO), copying 8 MiB at a time from a FIFO that the test feeds one copy and a bit and then
# leaves open, so the writer is mid-write (a temp file with data, not renamed) when killed.
WRITER = textwrap.dedent(
    """
    import sys
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
    LocalStorage(sys.argv[1])._put_file("blobs/ab/" + "ab" * 32, sys.argv[2])
    """
)


def _writer_killed_mid_write(root: Path, fifo: Path) -> Path:
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(fifo)])
    try:
        with open(fifo, "wb") as feed:
            feed.write(bytes(8 << 20) + b"and a bit")
            feed.flush()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                temps = [p for p in root.rglob(".mfckpt-tmp-*") if p.stat().st_size > 0]
                if temps:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the writer never started writing")
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    (temp,) = temps
    return temp


def test_gc_removes_a_killed_writers_temp_file_only_past_the_grace_period(tmp_path):
    root = tmp_path / "store"
    store = CheckpointStore(LocalStorage(str(root)), options())
    write_tree(tmp_path / "src", {"weights.bin": os.urandom(5000), "log.txt": b"epoch 1\n"})
    m = store.save(str(tmp_path / "src"), make_scope())
    temp = _writer_killed_mid_write(root, tmp_path / "fifo")
    assert temp.parent.parent == root / "blobs"

    # Recent (it could be a live writer's): kept, whatever the grace period.
    for grace in (0, 3600):
        report = store.gc(grace_seconds=grace)
        assert report.temps_deleted == 0 and temp.exists()

    # Older than the grace period (and MIN_AGE): a dry run counts it, a run removes it.
    old = time.time() - max(3600, MIN_AGE) - 60
    os.utime(temp, (old, old))
    assert store.gc(grace_seconds=3600, dry_run=True).temps_deleted == 1 and temp.exists()
    assert store.gc(grace_seconds=3600).temps_deleted == 1
    assert not temp.exists()
    assert not list(root.rglob(".mfckpt-tmp-*"))
    # The checkpoint is untouched.
    assert verify.verify(store.storage, deep=True).ok
    store.load(store.read(m.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "src")
