"""What a prune with ``expire_after_days`` reads: the ages come from the listing its headers
came from (:func:`.policies.list_headers` keeps each manifest's mtime), so pruning after a
listing LISTs the checkpoints' prefix no second time (a task with ``expire_after_days`` prunes
after every save).  Headers built by hand (not from a listing) are still dated by one listing."""

from __future__ import annotations

import os
import time

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import parse_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import build
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore

from .helpers import make_scope, options
from .test_list_reads import ReadCounting

DAY = 86400.0


def _store_with_one_expired(tmp_path) -> tuple[CheckpointStore, ReadCounting, list[str]]:
    storage = ReadCounting(str(tmp_path / "store"))
    store = CheckpointStore(storage, options())
    keys = []
    for n in range(3):
        src = tmp_path / ("src%d" % n)
        src.mkdir()
        (src / "w.bin").write_bytes(b"weights %d" % n)
        keys.append(store.save(str(src), make_scope(), metadata={"i": n}).key)
    then = time.time() - 40 * DAY
    os.utime(os.path.join(storage.root, keys[0]), (then, then))
    return store, storage, keys


def _checkpoint_lists(storage: ReadCounting) -> list[str]:
    """LISTs of the task's checkpoints (not the pins' or the store clock's probe's)."""
    return [r for r in storage.reads if r == make_scope().task_prefix()]


def _expire(store: CheckpointStore, headers) -> dict:
    ((_, plan),) = store.prune(
        headers, build(expire_after_days=30), group_of=lambda h: "g", within_task=True
    )
    return plan.expired


def test_a_prune_after_a_listing_dates_the_checkpoints_without_listing_them_again(tmp_path):
    store, storage, keys = _store_with_one_expired(tmp_path)
    headers = store.headers(make_scope().task_prefix())
    storage.reads.clear()
    expired = _expire(store, headers)
    assert expired == {keys[0]: "expired: 40 days old (expire_after_days=30)"}
    assert _checkpoint_lists(storage) == [], storage.reads  # was: the task prefix again
    assert not os.path.exists(os.path.join(storage.root, keys[0]))


def test_headers_built_by_hand_are_dated_by_one_listing(tmp_path):
    store, storage, keys = _store_with_one_expired(tmp_path)
    headers = [parse_key(k) for k in keys]
    storage.reads.clear()
    expired = _expire(store, headers)
    assert expired == {keys[0]: "expired: 40 days old (expire_after_days=30)"}
    assert _checkpoint_lists(storage) == [make_scope().task_prefix()], storage.reads
