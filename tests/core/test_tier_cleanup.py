"""Cleanup of a local tier (``core/tier_cleanup.py``, docs/upload.md "Cleanup"): what is
removed, what is kept (a ``failed`` checkpoint is the only copy), the tier's blobs collected by
the store's own GC, and a task saving into the same tier meanwhile loses nothing.

Real tiers on local disk; ages made with ``os.utime``; a concurrent writer is another process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier_cleanup as C
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    BLOBS_PREFIX,
    MANIFESTS_PREFIX,
    UPLOADS,
    split_manifest_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.upload_status import (
    FAILED,
    UPLOADED,
    UPLOADING,
    UploadRecords,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import CHUNK, make_scope, options, rand, snapshot, write_tree

DAY = 86400.0


@pytest.fixture
def tier(tmp_path):
    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")), options())
    store = T.open_tier(remote, str(tmp_path / "base"))
    yield store
    store.close()
    remote.close()


def _save(tier: CheckpointStore, tmp_path: Path, name: str, task: str = "1", seed: int = 0):
    src = write_tree(tmp_path / name, {"w.bin": rand(CHUNK + 7, seed), "c.txt": name.encode()})
    return tier.save(str(src), make_scope(task=task))


def _manifests(tier: CheckpointStore) -> set:
    return {
        o.key for o in tier.storage.list(MANIFESTS_PREFIX) if split_manifest_key(o.key) is not None
    }


def _records(tier: CheckpointStore) -> list:
    return [o.key for o in tier.storage.list(UPLOADS + "/")]


def _blob_bytes(tier: CheckpointStore) -> int:
    return sum(o.size for o in tier.storage.list(BLOBS_PREFIX))


def _age(tier: CheckpointStore, key: str, seconds: float) -> None:
    path = os.path.join(tier.storage.root, key)
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_remove_deletes_checkpoints_and_their_records_but_keeps_failed_ones(tier, tmp_path):
    a, b, c = (_save(tier, tmp_path, n, seed=i) for i, n in enumerate("abc"))
    records = UploadRecords(tier.storage)
    records.set(a.key, UPLOADED)
    records.set(b.key, FAILED, "the store refused")
    done = C.remove(tier, [a.key, b.key, c.key])
    assert sorted(done.removed) == sorted([a.key, c.key]) and done.kept_failed == [b.key]
    assert done.records == 1
    assert _manifests(tier) == {b.key}
    assert records.get(a.key) is None and records.get(b.key).status == FAILED
    # The failed one still loads, whole.
    tier.load(tier.read(b.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "b")


def test_sweep_removes_aged_checkpoints_of_any_task_but_failed_and_live_uploading_ones(
    tier, tmp_path
):
    old = _save(tier, tmp_path, "old", task="1", seed=1)
    old_failed = _save(tier, tmp_path, "oldf", task="2", seed=2)
    old_busy = _save(tier, tmp_path, "oldb", task="3", seed=3)
    fresh = _save(tier, tmp_path, "fresh", task="4", seed=4)
    records = UploadRecords(tier.storage)
    records.set(old.key, UPLOADED)
    records.set(old_failed.key, FAILED, "gave up")
    records.set(old_busy.key, UPLOADING)  # this (live) process is uploading it
    # A record whose checkpoint is gone (retention pruned it): removed whatever its age.
    gone = _save(tier, tmp_path, "gone", task="5", seed=5)
    records.set(gone.key, UPLOADED)
    tier.delete(gone.key)
    for saved in (old, old_failed, old_busy):
        _age(tier, saved.key, 8 * DAY)
    _age(tier, fresh.key, 6 * DAY)

    done = C.sweep(tier, 7 * DAY)
    assert done.removed == [old.key] and done.kept_failed == [old_failed.key]
    assert done.records == 2  # old's and gone's
    assert _manifests(tier) == {old_failed.key, old_busy.key, fresh.key}
    assert records.get(old.key) is None and records.get(gone.key) is None
    assert records.get(old_failed.key).status == FAILED

    # The collection that follows keeps every blob a remaining checkpoint needs.
    C.collect(tier)
    for saved in (old_failed, old_busy, fresh):
        dest = tmp_path / ("out-" + saved.key[-12:])
        tier.load(tier.read(saved.key), str(dest))


def test_a_sweep_refuses_a_negative_age(tier):
    with pytest.raises(CheckpointConfigError, match="max_age_seconds"):
        C.sweep(tier, -1.0)


def test_collect_reclaims_the_blobs_of_removed_checkpoints_on_an_emptied_tier(tier, tmp_path):
    saved = [_save(tier, tmp_path, "s%d" % i, seed=10 + i) for i in range(5)]
    assert _blob_bytes(tier) >= 5 * CHUNK
    C.remove(tier, [s.key for s in saved[:4]])
    C.collect(tier)
    # Only the last checkpoint's blobs are left: its own bytes, not five checkpoints'.
    left = _blob_bytes(tier)
    assert CHUNK <= left < 2 * CHUNK
    tier.load(tier.read(saved[4].key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "s4")
    C.remove(tier, [saved[4].key])
    C.collect(tier)  # no manifest left: still collected (forced)
    assert _blob_bytes(tier) == 0 and _manifests(tier) == set()


_SAVER = textwrap.dedent(
    """
    import json, os, random, sys, time
    import metaflow  # noqa: F401
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (
        TransferOptions,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

    remote_root, base, work, out, n, chunk = sys.argv[1:7]
    opts = TransferOptions(chunk_size=int(chunk), small_size=16384, workers=4)
    remote = CheckpointStore(LocalStorage(remote_root), opts)
    tier = T.open_tier(remote, base)
    scope = Scope(namespace="user:alice", flow="TrainFlow", step="train", foreach="_",
                  run="1", task="other", attempt=0)
    saved = []
    shared = random.Random(7).randbytes(2 * int(chunk))  # the same bytes the cleaner's had
    for i in range(int(n)):
        d = os.path.join(work, "s%d" % i)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "shared.bin"), "wb") as f:
            f.write(shared)
        with open(os.path.join(d, "own.bin"), "wb") as f:
            f.write(random.Random(1000 + i).randbytes(int(chunk) + i))
        saved.append([tier.save(d, scope).key, d])
        time.sleep(0.02)
    with open(out, "w") as f:
        json.dump(saved, f)
    """
)


def test_a_cleanup_beside_another_process_saving_into_the_same_tier_loses_nothing(tmp_path):
    """Two tasks on one machine share a tier: this one repeatedly saves (blobs shared with the
    other's), removes its checkpoints and collects; the other saves 15 times meanwhile,
    deduplicating against blobs the collection would reclaim.  Every checkpoint of the other
    loads, every blob verified; the collections did reclaim this one's blobs."""
    remote_root, base = str(tmp_path / "remote"), str(tmp_path / "base")
    remote = CheckpointStore(LocalStorage(remote_root), options())
    tier = T.open_tier(remote, base)
    out = tmp_path / "saved.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, remote_root, base, str(tmp_path / "w"), str(out), "15"]
        + [str(CHUNK)]
    )
    shared = random.Random(7).randbytes(2 * CHUNK)  # the other process saves it too
    rounds = reclaimed = 0
    try:
        while proc.poll() is None or rounds < 3:
            src = write_tree(
                tmp_path / ("mine%d" % rounds),
                {"shared.bin": shared, "own.bin": rand(CHUNK, 500 + rounds)},
            )
            mine = tier.save(str(src), make_scope(task="mine"))
            C.remove(tier, [mine.key])
            try:
                reclaimed += C.collect(tier).blobs_deleted
            except CheckpointConfigError:  # the other process collects: fine
                pass
            rounds += 1
    finally:
        assert proc.wait(timeout=120) == 0
    assert reclaimed > 0  # the race is not vacuous
    for key, src in json.loads(out.read_text()):
        dest = tmp_path / ("out-" + os.path.basename(src))
        tier.load(tier.read(key), str(dest))
        assert snapshot(dest) == snapshot(Path(src))
    tier.close()
    remote.close()


def test_the_start_sweep_removes_an_old_failed_checkpoint_once_the_flow_store_supersedes_it(
    tmp_path,
):
    """An old ``failed`` tier checkpoint whose task later uploaded a newer ``latest=True`` one
    of the same series (or that the flow's store holds after all) is moot: the start sweep of
    an upload policy removes it.  One nothing supersedes is still kept, and logged."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.upload_policy import (
        UploadPolicy,
    )

    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")), options())
    base = str(tmp_path / "base")
    tier = T.open_tier(remote, base)
    moot = _save(tier, tmp_path, "moot", task="1").key
    uploaded_after_all = _save(tier, tmp_path, "there", task="3", seed=3).key
    only_copy = _save(tier, tmp_path, "only", task="2", seed=2).key
    records = UploadRecords(tier.storage)
    for key in (moot, uploaded_after_all, only_copy):
        records.set(key, FAILED, "the store refused")
        _age(tier, key, 3 * DAY)
    T.upload(tier, remote, uploaded_after_all)  # (its record still says failed)
    src = write_tree(tmp_path / "newer", {"w.bin": rand(CHUNK, 9)})
    remote.save(str(src), make_scope(task="1"))  # task 1's series moved on in the flow's store
    tier.close()
    log: list = []
    policy = UploadPolicy(remote, mode="end", base=base, log=log.append)
    policy.sweep_at_start(2)
    assert _manifests(policy.tier) == {only_copy}
    assert [k.split("/", 1)[1] for k in _records(policy.tier)] == [only_copy.split("/", 1)[1]]
    kept = [m for m in log if m.startswith("[@checkpoint] Kept 1")]
    assert len(kept) == 1 and only_copy in kept[0], log
    policy.tier.close()
    remote.close()
