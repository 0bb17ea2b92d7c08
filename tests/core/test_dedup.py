"""Deduplication and packing: re-saves upload only what changed; tiny files are packed."""

from __future__ import annotations

import math

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore

from .helpers import (
    CHUNK,
    blob_keys,
    make_scope,
    manifest_keys,
    options,
    rand,
    sample_spec,
    snapshot,
    write_tree,
)


def _total(src) -> int:
    return sum(p.stat().st_size for p in src.rglob("*") if p.is_file())


def test_resave_unchanged_uploads_only_the_manifest(store, memory, tmp_path):
    """Saving the same directory again uploads 0 data bytes; only a new manifest appears."""
    src = write_tree(tmp_path / "src", sample_spec())
    first = store.save(str(src), make_scope())
    before = {o.key for o in memory.list()}
    second = store.save(str(src), make_scope())
    after = {o.key for o in memory.list()}
    assert second.stats["bytes_uploaded"] == 0
    assert second.stats["blobs_uploaded"] == 0
    assert second.stats["bytes_read"] == _total(src)
    assert second.stats["bytes_deduplicated"] == _total(src)
    assert after - before == {second.key}
    assert second.key != first.key


def test_resave_from_a_new_process_is_deduplicated(memory, tmp_path):
    """A fresh store (e.g. a retry in a new process) also skips blobs already in storage."""
    src = write_tree(tmp_path / "src", sample_spec())
    CheckpointStore(memory, options()).save(str(src), make_scope())
    blobs = blob_keys(memory)
    again = CheckpointStore(memory, options()).save(str(src), make_scope(attempt=1))
    assert again.stats["bytes_uploaded"] == 0
    assert blob_keys(memory) == blobs


def test_changing_one_chunk_uploads_only_that_chunk(store, memory, tmp_path):
    """Editing one byte of a large file re-uploads one chunk; both versions still load."""
    spec = sample_spec()
    src = write_tree(tmp_path / "src", spec)
    old_snapshot = snapshot(src)
    old = store.save(str(src), make_scope())
    blobs = blob_keys(memory)
    with open(src / "model" / "weights.bin", "r+b") as f:
        f.seek(2 * CHUNK + 10)
        f.write(b"\xff" if spec["model/weights.bin"][2 * CHUNK + 10] != 0xFF else b"\x00")
    new = store.save(str(src), make_scope())
    assert new.stats["bytes_uploaded"] == CHUNK
    assert new.stats["blobs_uploaded"] == 1
    assert len(blob_keys(memory) - blobs) == 1
    store.load(store.read(old.key), str(tmp_path / "old"))
    store.load(store.read(new.key), str(tmp_path / "new"))
    assert snapshot(tmp_path / "old") == old_snapshot
    assert snapshot(tmp_path / "new") == snapshot(src)


def test_appending_to_a_file_reuses_its_full_chunks(store, tmp_path):
    """Growing a file (a log, a dataset) uploads only the new tail chunks."""
    data = rand(3 * CHUNK, 5)
    src = write_tree(tmp_path / "src", {"data.bin": data})
    store.save(str(src), make_scope())
    (src / "data.bin").write_bytes(data + b"tail")
    m = store.save(str(src), make_scope())
    assert m.stats["bytes_uploaded"] == 4
    assert m.stats["bytes_deduplicated"] == 3 * CHUNK


def test_many_tiny_files_are_packed_into_few_blobs(store, memory, tmp_path):
    """2000 files of 100 bytes become a handful of blobs, not one object per file."""
    spec = {"shard_%02d/f_%04d.txt" % (i % 20, i): rand(100, 1000 + i) for i in range(2000)}
    src = write_tree(tmp_path / "src", spec)
    m = store.save(str(src), make_scope())
    n_blobs = len(blob_keys(memory))
    assert n_blobs <= math.ceil(2000 * 100 / CHUNK) + 1
    assert m.stats["blobs_uploaded"] == n_blobs
    assert len(manifest_keys(memory)) == 1
    store.close()  # ends the writer's session: its lease objects go
    assert len(memory.list()) == n_blobs + 1
    dest = tmp_path / "dest"
    store.load(store.read(m.key), str(dest))
    assert snapshot(dest) == snapshot(src)


def test_identical_files_share_storage(store, memory, tmp_path):
    """Two copies of the same large file are stored once."""
    data = rand(2 * CHUNK, 9)
    src = write_tree(tmp_path / "src", {"a.bin": data, "copy/a.bin": data})
    m = store.save(str(src), make_scope())
    assert m.stats["bytes_read"] == 4 * CHUNK
    assert len(blob_keys(memory)) == 2
    dest = tmp_path / "dest"
    store.load(store.read(m.key), str(dest))
    assert (dest / "copy" / "a.bin").read_bytes() == data
