"""What ``current.checkpoint.list()`` reads: the running attempt's own checkpoints have no
ending yet, so listing them reads none of the task's attempt summaries (a first attempt's
``list()``, e.g. a framework callback's on every rotation, costs what it did before attempt
endings existed: the step's summary index only); an earlier attempt's ending is read, so a
retry lists attempt 0's as "failed"."""

from __future__ import annotations

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build

from .helpers import make_scope, options, write_tree


class ReadCounting(LocalStorage):
    """A local store recording the keys and prefixes read."""

    def __init__(self, root: str):
        super().__init__(root)
        self.reads: list[str] = []

    def get_bytes(self, key, *args, **kwargs):
        self.reads.append(key)
        return super().get_bytes(key, *args, **kwargs)

    def list(self, prefix: str = ""):
        self.reads.append(prefix)
        return super().list(prefix)


def _task_summary_reads(storage: ReadCounting) -> list[str]:
    """Reads of the task's own summaries (``indexes/.../<run>/<task>/attempt-<n>.json``)."""
    return [k for k in storage.reads if k.startswith("indexes/") and "/100/7/" in k]


def _task(tmp_path, storage, attempt):
    store = CheckpointStore(storage, options())
    directory = tmp_path / ("dir-%d" % attempt)
    write_tree(directory, {"state.txt": b"attempt %d" % attempt})
    return build(store, make_scope(attempt=attempt), str(directory), log=lambda m: None)


def test_a_first_attempt_listing_its_own_checkpoints_reads_no_attempt_summary(tmp_path):
    storage = ReadCounting(str(tmp_path / "store"))
    parts = _task(tmp_path, storage, 0)
    parts.runtime.save(metadata={"epoch": 1})
    parts.runtime.save(metadata={"epoch": 2})
    storage.reads.clear()
    refs = parts.runtime.list()
    assert [r.metadata["epoch"] for r in refs] == [2, 1]
    assert [r.task_status for r in refs] == [None, None]  # running: no ending yet
    assert _task_summary_reads(storage) == [], storage.reads


def test_a_retry_reads_the_ending_of_the_attempt_before_it(tmp_path):
    storage = ReadCounting(str(tmp_path / "store"))
    first = _task(tmp_path, storage, 0)
    first.runtime.save(metadata={"epoch": 1})
    first.saves.write_summaries(ended="failed")
    retry = _task(tmp_path, storage, 1)
    retry.runtime.save(metadata={"epoch": 2})
    storage.reads.clear()
    refs = retry.runtime.list(attempt="all")
    assert [(r.attempt, r.task_status) for r in refs] == [(1, None), (0, "failed")]
    assert _task_summary_reads(storage), storage.reads
