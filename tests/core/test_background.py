"""Background saves: snapshots, ordering, the staged-bytes budget, errors surfacing."""

from __future__ import annotations

import threading
import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.task.background import (
    BackgroundSaver,
    snapshot,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime import CheckpointRuntime

from .helpers import make_scope, write_tree


def test_snapshot_is_a_copy_with_modes(tmp_path):
    src = write_tree(tmp_path / "src", {"a.txt": b"one", "d/run.sh": (b"#!", 0o755), "e": None})
    staging, path, nbytes = snapshot(str(src), str(tmp_path))
    (src / "a.txt").write_bytes(b"changed")
    assert nbytes == 5
    assert (tmp_path / staging / "src" / "a.txt").read_bytes() == b"one"
    assert ((tmp_path / staging / "src" / "d" / "run.sh").stat().st_mode & 0o777) == 0o755
    assert (tmp_path / staging / "src" / "e").is_dir()
    assert path.endswith("/src")


def test_budget_makes_a_save_wait_for_earlier_ones():
    saver = BackgroundSaver(budget_bytes=100)
    release = threading.Event()
    saver.reserve(80)
    first = saver.submit("first", "/nonexistent-staging", 80, lambda: release.wait(10) and {})
    waited = []

    def second():
        t = time.monotonic()
        saver.reserve(50)  # 80 + 50 > 100: waits until the first is done
        waited.append(time.monotonic() - t)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # still waiting for room
    release.set()
    thread.join(5)
    assert first.done() and waited and waited[0] >= 0.25
    saver.adjust(-50)
    assert saver.wait_all() == []


def test_a_single_save_larger_than_the_budget_still_runs():
    saver = BackgroundSaver(budget_bytes=10)
    saver.reserve(1000)  # nothing pending: it must not wait forever
    saver.adjust(500)  # and correcting its size never waits
    handle = saver.submit("big", "/nonexistent-staging", 1500, lambda: {"key": "k"})
    assert handle.wait(5) == {"key": "k"}


def test_failed_background_save_is_reported_by_flush(store, tmp_path):
    src = write_tree(tmp_path / "ckpt", {"a.txt": b"a"})
    runtime = CheckpointRuntime(store, make_scope(), str(src), log=lambda m: None)
    ok = runtime.save(metadata={"i": 0}, blocking=False)
    assert ok.wait(10).metadata == {"i": 0}

    def refuse(key, data):
        raise PermissionError("injected: read-only store")

    store.storage._put_bytes = refuse
    failed = runtime.save(metadata={"i": 1}, blocking=False)
    with pytest.raises(Exception, match="injected: read-only store"):
        failed.wait(10)
    assert runtime.pending() == []  # nothing running any more, but the failure is kept
    with pytest.raises(Exception, match="1 background checkpoint save"):
        runtime.flush()
