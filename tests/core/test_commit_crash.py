"""Commit protocol: a save that dies at any point never produces a visible, torn checkpoint."""

from __future__ import annotations

import threading

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointNotFound,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import (
    RetryPolicy,
    Storage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import (
    blob_keys,
    make_scope,
    manifest_keys,
    options,
    sample_spec,
    snapshot,
    write_tree,
)


class InjectedCrash(RuntimeError):
    """The fault: a non-transient error (classified PERMANENT by Storage)."""


class FaultyStorage(Storage):
    """Delegates to an inner MemoryStorage; every mutating call after ``fail_after`` raises.

    Once tripped it keeps failing, like a process that has died: nothing later is written.
    ``fail_on`` optionally restricts the fault to keys with that prefix.
    """

    TYPE = "faulty"

    def __init__(self, inner: MemoryStorage, fail_on: str = ""):
        super().__init__(inner.url, retry=RetryPolicy(attempts=3, max_seconds=5, backoff=0.001))
        self.inner = inner
        self.fail_on = fail_on
        self.fail_after = None
        self.mutations = 0
        self.refused: list = []
        self._count = threading.Lock()

    def arm(self, n: int) -> None:
        """Let ``n`` more mutating calls through, then fail every later one."""
        self.fail_after = self.mutations + n

    def disarm(self) -> None:
        self.fail_after = None

    def _mutate(self, key: str) -> None:
        with self._count:
            if (
                self.fail_after is not None
                and key.startswith(self.fail_on)
                and self.mutations >= self.fail_after
            ):
                self.refused.append(key)
                raise InjectedCrash("injected crash before writing %s" % key)
            self.mutations += 1

    def _put_bytes(self, key, data):
        self._mutate(key)
        self.inner._put_bytes(key, data)

    def _delete(self, key):
        self._mutate(key)
        self.inner._delete(key)

    def _get_bytes(self, key, start, length):
        return self.inner._get_bytes(key, start, length)

    def _exists(self, key):
        return self.inner._exists(key)

    def _list(self, prefix):
        return self.inner._list(prefix)


def _v2_spec() -> dict:
    """The second save: some files changed (new blobs), some unchanged (deduplicated)."""
    spec = sample_spec(seed=0)
    new = sample_spec(seed=1)
    spec["model/weights.bin"] = new["model/weights.bin"]
    spec["model/config.json"] = new["model/config.json"]
    spec["extra/new.bin"] = new["model/exact.bin"]
    return spec


def _setup(tmp_path, tag: str, fail_on: str = ""):
    """Fresh storage holding one committed checkpoint of v1; returns what the test needs."""
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, fail_on=fail_on)
    store = CheckpointStore(faulty, options())
    v1 = write_tree(tmp_path / tag / "v1", sample_spec(seed=0))
    v2 = write_tree(tmp_path / tag / "v2", _v2_spec())
    prev = store.save(str(v1), make_scope())
    return inner, faulty, store, v1, v2, prev


def _assert_previous_is_latest(store, inner, prev, v1, dest):
    """Only ``prev`` is committed, it is what every policy picks, and it loads byte-identical."""
    assert manifest_keys(inner) == {prev.key}
    assert [h.key for h in store.headers(make_scope().step_prefix())] == [prev.key]
    retry = store.resolve("fresh", make_scope(attempt=1))
    assert retry.header is not None and retry.header.key == prev.key
    eager = store.resolve("eager", make_scope(run="101", task="9"))
    assert eager.header is not None and eager.header.key == prev.key
    store.load(store.read(prev.key), str(dest))
    assert snapshot(dest) == snapshot(v1)


def test_crash_after_every_mutating_call_leaves_previous_checkpoint(tmp_path):
    """For every N, a save killed after N writes is invisible and the previous one stays latest."""
    inner, faulty, store, _v1, v2, _prev = _setup(tmp_path, "count")
    before = faulty.mutations
    store.save(str(v2), make_scope())
    total = faulty.mutations - before
    assert total >= 3  # several blobs and the manifest

    for n in range(total + 1):
        inner, faulty, store, v1, v2, prev = _setup(tmp_path, "n%d" % n)
        faulty.arm(n)
        dest = tmp_path / ("dest%d" % n)
        if n < total:
            with pytest.raises(StorageError, match="injected crash"):
                store.save(str(v2), make_scope())
            refused_manifests = [k for k in faulty.refused if k.startswith("manifests/")]
            if n == total - 1:  # the manifest is the last write: only it was refused
                assert refused_manifests and len(refused_manifests) == len(faulty.refused)
            for key in refused_manifests:
                with pytest.raises(CheckpointNotFound):
                    store.read(key)
            _assert_previous_is_latest(store, inner, prev, v1, dest)
            # The same store recovers once storage does: orphans never poison a later save.
            faulty.disarm()
        new = store.save(str(v2), make_scope())
        assert store.resolve("fresh", make_scope(attempt=1)).header.key == new.key
        store.load(store.read(new.key), str(tmp_path / ("after%d" % n)))
        assert snapshot(tmp_path / ("after%d" % n)) == snapshot(v2)


def test_crash_between_blob_upload_and_manifest_write(tmp_path):
    """All blobs uploaded but the manifest write fails: the checkpoint does not exist."""
    inner, faulty, store, v1, v2, prev = _setup(tmp_path, "m", fail_on="manifests/")
    blobs_before = blob_keys(inner)
    faulty.arm(0)
    with pytest.raises(StorageError, match="injected crash"):
        store.save(str(v2), make_scope(), metadata={"epoch": 2})
    assert len(faulty.refused) == 1 and faulty.refused[0].startswith("manifests/")
    assert blob_keys(inner) > blobs_before  # the new data is there, only the commit is missing
    with pytest.raises(CheckpointNotFound):
        store.read(faulty.refused[0])
    _assert_previous_is_latest(store, inner, prev, v1, tmp_path / "dest")


def test_crash_on_first_write_of_first_save_leaves_no_checkpoint(tmp_path):
    """A first save that dies leaves nothing to load: a retry starts fresh, never torn."""
    inner = MemoryStorage()
    faulty = FaultyStorage(inner)
    store = CheckpointStore(faulty, options())
    src = write_tree(tmp_path / "src", sample_spec())
    faulty.arm(2)
    with pytest.raises(StorageError):
        store.save(str(src), make_scope())
    assert manifest_keys(inner) == set()
    assert store.headers("manifests/") == []
    assert store.resolve("fresh", make_scope(attempt=1)).header is None
    assert store.resolve("eager", make_scope(run="101")).header is None
