"""Browsing primitives: reading one file, listing summaries, named checkpoints, upload once."""

from __future__ import annotations

import json

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import summary
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    blob_key,
    step_index_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
    CheckpointNotFound,
)

from .helpers import CHUNK, KIB, CountingStorage, make_scope, options, rand, write_tree


@pytest.fixture
def counting():
    storage = CountingStorage()
    return storage, CheckpointStore(storage, options())


def test_open_reads_one_small_file_without_the_rest(counting, tmp_path):
    storage, store = counting
    big = rand(40 * CHUNK, 1)  # 2.5 MiB in 64 KiB chunks
    small = rand(4 * KIB, 2)
    src = write_tree(tmp_path / "src", {"weights.bin": big, "cfg/a.json": small})
    m = store.save(str(src), make_scope())
    storage.bytes_read = 0
    with store.open(m, "cfg/a.json") as f:
        assert f.read() == small
    # Only the file's slice of its pack was fetched, not the pack and never the big file.
    assert storage.bytes_read == len(small)
    with store.open(m, "./weights.bin") as f:
        assert f.read(10) == big[:10]
        assert f.read() == big[10:]


def test_open_detects_corruption_and_names_the_file(counting, tmp_path):
    storage, store = counting
    src = write_tree(tmp_path / "src", {"a.txt": b"hello world" * 10})
    m = store.save(str(src), make_scope())
    key = blob_key(m.files[0].chunks[0].blob)
    storage.put_bytes(key, bytes(b ^ 0xFF for b in storage.get_bytes(key)))
    with pytest.raises(CheckpointIntegrityError, match="a.txt"):
        store.open(m, "a.txt").read()


def test_open_unknown_file_lists_what_exists(store, tmp_path):
    src = write_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    m = store.save(str(src), make_scope())
    with pytest.raises(CheckpointNotFound, match=r"no file 'c.txt' \(it has a.txt, b.txt"):
        store.open(m, "c.txt")


def test_summaries_come_from_the_index_once_written(counting, tmp_path):
    storage, store = counting
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    saved = [store.save(str(src), make_scope(), metadata={"epoch": i}) for i in range(12)]
    headers = store.headers(make_scope().step_prefix())
    first = store.summaries(headers)
    assert [first[m.key]["metadata"]["epoch"] for m in saved] == list(range(12))
    assert storage.exists(step_index_key(make_scope().step_prefix()))
    storage.gets.clear()
    again = store.summaries(headers)
    assert again == first
    # The second listing read the index only: no manifest was downloaded.
    assert not [k for k in storage.gets if k.startswith("manifests/")]


def test_index_is_only_a_hint(counting, tmp_path):
    storage, store = counting
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    for i in range(10):
        store.save(str(src), make_scope(), metadata={"epoch": i})
    prefix = make_scope().step_prefix()
    store.summaries(store.headers(prefix))
    # A deleted checkpoint is not reported even though the index still describes it ...
    victim = store.headers(prefix)[0]
    store.delete(victim.key)
    headers = store.headers(prefix)
    assert victim.key not in store.summaries(headers)
    # ... a new one missing from the index is read from its manifest ...
    new = store.save(str(src), make_scope(), metadata={"epoch": 99})
    assert store.summaries(store.headers(prefix))[new.key]["metadata"] == {"epoch": 99}
    # ... and an unreadable index is ignored.
    storage.put_bytes(step_index_key(prefix), b"{not json")
    got = store.summaries(store.headers(prefix))
    assert sorted(s["metadata"]["epoch"] for s in got.values()) == list(range(9)) + [99]
    body = json.loads(storage.get_bytes(step_index_key(prefix)))
    assert victim.key not in body["entries"]  # rewritten without the deleted checkpoint


def test_identical_upload_reuses_the_newest_version(store, tmp_path):
    src = write_tree(tmp_path / "src", {"model.pt": rand(3 * CHUNK, 3), "vocab.txt": b"abc"})
    scope = library_scope("resnet50")
    first = store.save(str(src), scope, name="resnet50", reuse_identical=True)
    assert first.stats["bytes_uploaded"] == 3 * CHUNK + 3
    again = store.save(str(src), scope, name="resnet50", reuse_identical=True)
    assert again.key == first.key
    assert again.stats["reused"] is True and again.stats["bytes_uploaded"] == 0
    assert len(store.headers(scope.step_prefix())) == 1
    # Changed content (or metadata) is a new version; the old one stays addressable.
    (src / "vocab.txt").write_bytes(b"abcd")
    second = store.save(str(src), scope, name="resnet50", reuse_identical=True)
    assert second.key != first.key and second.stats["bytes_uploaded"] == 4
    tagged = store.save(
        str(src), scope, name="resnet50", metadata={"top1": 0.8}, reuse_identical=True
    )
    assert tagged.key != second.key
    assert store.named("resnet50").key == tagged.key
    assert store.named("resnet50@" + first.id[:6]).key == first.key
    assert store.named("resnet50@latest").key == tagged.key


def test_named_lookup_errors_say_what_exists(store, tmp_path):
    with pytest.raises(CheckpointNotFound, match="No checkpoint named 'bert'.*upload PATH"):
        store.named("bert")
    src = write_tree(tmp_path / "src", {"a": b"a"})
    m = store.save(str(src), library_scope("bert"), name="bert")
    with pytest.raises(CheckpointNotFound, match="no version matching 'ffff'.*" + m.id):
        store.named("bert@ffff")


def test_open_is_seekable_and_fetches_only_the_chunks_read(counting, tmp_path):
    storage, store = counting
    big = rand(10 * CHUNK + 123, 4)
    src = write_tree(tmp_path / "src", {"weights.bin": big})
    m = store.save(str(src), make_scope())
    storage.bytes_read = 0
    with store.open(m, "weights.bin") as f:
        assert f.seekable()
        f.seek(7 * CHUNK + 5)
        assert f.read(100) == big[7 * CHUNK + 5 : 7 * CHUNK + 105]
        assert storage.bytes_read == CHUNK  # one chunk fetched for a read inside it
        f.seek(-23, 2)
        assert f.tell() == len(big) - 23
        assert f.read() == big[-23:]
        f.seek(0)
        assert f.read(5) == big[:5]


def test_a_tasks_own_summary_spares_reading_its_manifests(counting, tmp_path):
    storage, store = counting
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    saved = [store.save(str(src), make_scope(), metadata={"epoch": i}) for i in range(20)]
    summary.write_task_summaries(storage, make_scope().task_prefix(), 0, saved[:15])
    storage.gets.clear()
    got = store.summaries(store.headers(make_scope().step_prefix()))
    assert [got[m.key]["metadata"]["epoch"] for m in saved] == list(range(20))
    manifest_reads = [k for k in storage.gets if k.startswith("manifests/")]
    assert sorted(manifest_reads) == sorted(m.key for m in saved[15:])  # only the 5 not covered
