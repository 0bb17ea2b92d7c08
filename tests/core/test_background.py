"""Background saves: snapshots, ordering, the staged-bytes budget, errors surfacing."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import is_manifest_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointException
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.background import (
    BackgroundSaver,
    FailedSave,
    snapshot,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build_runtime

from .helpers import make_scope, options, write_tree


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
    runtime = build_runtime(store, make_scope(), str(src), log=lambda m: None)
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


class RefusingManifests(MemoryStorage):
    """A memory store whose 2nd and 3rd manifest writes fail (as a store turning read-only
    would): the saves before and after are unaffected."""

    def __init__(self, failing: set[int]):
        super().__init__()
        self.failing = failing
        self.manifests = 0

    def _put_bytes(self, key, data):
        if is_manifest_key(key):
            self.manifests += 1
            if self.manifests in self.failing:
                raise PermissionError("injected: manifest %d refused" % self.manifests)
        super()._put_bytes(key, data)


def test_flush_names_every_failed_background_save_and_its_error(tmp_path):
    """Two of four background saves fail: flush() names both saves with their own errors (not
    just the first) and lists them in ``failures``; the others are committed."""
    store = CheckpointStore(RefusingManifests(failing={2, 3}), options())
    src = write_tree(tmp_path / "ckpt", {"a.txt": b"a"})
    logs: list[str] = []
    runtime = build_runtime(store, make_scope(), str(src), log=logs.append)
    handles = [
        runtime.save(metadata={"i": i}, name="series%d" % i, blocking=False) for i in range(4)
    ]
    with pytest.raises(CheckpointException) as info:
        runtime.flush()
    error = info.value
    assert error.message.startswith("2 background checkpoint save(s) failed: ")
    for i, n in ((1, 2), (2, 3)):
        assert "%s: " % handles[i].description in error.message
        assert "injected: manifest %d refused" % n in error.message
    assert "series0" not in error.message and "series3" not in error.message
    assert [f.save for f in error.failures] == [handles[1].description, handles[2].description]
    assert all(isinstance(f, FailedSave) and f.error_type for f in error.failures)
    assert "manifest 2" in error.failures[0].message
    assert "manifest 3" in error.failures[1].message
    assert pickle.loads(pickle.dumps(error)).failures == error.failures
    assert [h.wait(10).metadata for h in (handles[0], handles[3])] == [{"i": 0}, {"i": 3}]
    assert [r.name for r in runtime.list()] == ["series3", "series0"]


def test_a_task_ending_after_failed_background_saves_logs_every_one(tmp_path):
    """At the task's end (flush(raise_errors=False)) the one log line names each failure."""
    store = CheckpointStore(RefusingManifests(failing={1, 2}), options())
    src = write_tree(tmp_path / "ckpt", {"a.txt": b"a"})
    logs: list[str] = []
    runtime = build_runtime(store, make_scope(), str(src), log=logs.append)
    for i in range(2):
        runtime.save(name="series%d" % i, blocking=False)
    runtime.flush(raise_errors=False)
    [line] = [m for m in logs if "background checkpoint save" in m]
    assert "manifest 1 refused" in line and "manifest 2 refused" in line
    assert "'series0'" in line and "'series1'" in line


@pytest.mark.parametrize("fails", [False, True], ids=["committed", "failed"])
def test_a_save_is_done_only_once_its_snapshot_is_removed(tmp_path, monkeypatch, fails):
    """Waiting for a background save (flush at the task's end) returns only after its snapshot
    is removed: the task's process exits right after, with this daemon thread, and used to
    leak a full copy of the checkpoint in the temp dir."""
    import shutil

    staging, _, nbytes = snapshot(str(write_tree(tmp_path / "src", {"w.bin": b"x" * 999})), None)
    done_when_removed: list[bool] = []
    rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):
        if path == staging:
            done_when_removed.append(handle.done())
        rmtree(path, *args, **kwargs)

    submitted = threading.Event()

    def commit():
        submitted.wait(30)  # `handle` is assigned
        if fails:
            raise CheckpointException("store unavailable")
        return {}

    monkeypatch.setattr(shutil, "rmtree", recording_rmtree)
    saver = BackgroundSaver(budget_bytes=1 << 20)
    handle = saver.submit("save", staging, nbytes, commit)
    submitted.set()
    failed = saver.wait_all()
    assert done_when_removed == [False]
    assert [type(e) for _, e in failed] == ([CheckpointException] if fails else [])
