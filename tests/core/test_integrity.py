"""Integrity: corrupt, missing or tampered data fails loudly with a named error, never silently."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import FileEntry
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIncomplete,
    CheckpointIntegrityError,
    ManifestError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import files_under, make_scope, options, sample_spec, snapshot, write_tree


class FlakyReads(MemoryStorage):
    """Memory storage that returns corrupted bytes on the first ``flips`` reads of chosen keys."""

    def __init__(self, flips: int = 1):
        super().__init__()
        self.flips = flips
        self.targets: set = set()
        self.reads: Counter = Counter()

    def _get_bytes(self, key, start, length):
        data = super()._get_bytes(key, start, length)
        self.reads[key] += 1
        if key in self.targets and self.reads[key] <= self.flips:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return data


def _saved(store, tmp_path):
    src = write_tree(tmp_path / "src", sample_spec())
    m = store.read(store.save(str(src), make_scope()).key)
    return src, m, {f.path: f for f in m.files}


def _flip_at_rest(storage, blob: str, pos: int = 100) -> None:
    key = blob_key(blob)
    data = bytearray(storage.get_bytes(key))
    data[pos] ^= 0x80
    storage.put_bytes(key, bytes(data))


def _rewrite_manifest(storage, key: str, edit) -> None:
    doc = json.loads(storage.get_bytes(key))
    edit(doc)
    storage.put_bytes(key, json.dumps(doc).encode())


def test_corrupt_chunk_raises_integrity_error_naming_key_and_file(store, memory, tmp_path):
    """A flipped byte at rest fails the load with the checkpoint key and the file path."""
    _src, m, by_path = _saved(store, tmp_path)
    _flip_at_rest(memory, by_path["model/weights.bin"].chunks[2].blob)
    dest = write_tree(tmp_path / "dest", {"mine.txt": b"keep"})
    with pytest.raises(CheckpointIntegrityError) as err:
        store.load(m, str(dest))
    assert m.key in str(err.value)
    assert "model/weights.bin" in str(err.value)
    assert files_under(dest) == ["mine.txt"]  # no partial files from the failed load


def test_corrupt_pack_raises_integrity_error(store, memory, tmp_path):
    """Corruption in a blob packing many small files is detected too."""
    _src, m, by_path = _saved(store, tmp_path)
    pack = by_path["model/config.json"].chunks[0].blob
    _flip_at_rest(memory, pack, pos=0)
    users = [p for p, f in by_path.items() if f.chunks and f.chunks[0].blob == pack]
    with pytest.raises(CheckpointIntegrityError) as err:
        store.load(m, str(tmp_path / "dest"))
    assert m.key in str(err.value)
    assert any(p in str(err.value) for p in users)
    assert files_under(tmp_path / "dest") == []


def test_flip_in_transit_is_healed_by_one_refetch(tmp_path):
    """A blob corrupted only on its first download is fetched again and the load succeeds."""
    storage = FlakyReads(flips=1)
    store = CheckpointStore(storage, options())
    src, m, by_path = _saved(store, tmp_path)
    key = blob_key(by_path["model/weights.bin"].chunks[1].blob)
    storage.targets.add(key)
    dest = tmp_path / "dest"
    store.load(m, str(dest))
    assert storage.reads[key] == 2
    assert snapshot(dest) == snapshot(src)


def test_persistent_corruption_is_fetched_at_most_twice(tmp_path):
    """A blob that is corrupt at rest is retried once, then reported; the load never loops."""
    storage = FlakyReads(flips=10**6)
    store = CheckpointStore(storage, options())
    _src, m, by_path = _saved(store, tmp_path)
    key = blob_key(by_path["model/exact.bin"].chunks[0].blob)
    storage.targets.add(key)
    with pytest.raises(CheckpointIntegrityError, match="model/exact.bin"):
        store.load(m, str(tmp_path / "dest"))
    assert storage.reads[key] == 2


def test_packed_file_digest_mismatch_is_detected(store, tmp_path):
    """A manifest whose per-file digest disagrees with the packed bytes fails the load."""
    _src, m, by_path = _saved(store, tmp_path)
    entry = by_path["model/config.json"]
    m.files[m.files.index(entry)] = FileEntry(
        entry.path, entry.size, entry.mode, entry.chunks, "0" * 64
    )
    with pytest.raises(CheckpointIntegrityError, match="model/config.json"):
        store.load(m, str(tmp_path / "dest"))
    assert files_under(tmp_path / "dest") == []


def test_missing_blob_raises_incomplete_naming_key(store, memory, tmp_path):
    """A blob deleted from the store makes the load fail with CheckpointIncomplete, not a crash."""
    _src, m, by_path = _saved(store, tmp_path)
    blob = by_path["model/weights.bin"].chunks[4].blob
    memory.delete(blob_key(blob))
    dest = write_tree(tmp_path / "dest", {"mine.txt": b"keep"})
    with pytest.raises(CheckpointIncomplete) as err:
        store.load(m, str(dest))
    assert m.key in str(err.value)
    assert blob in str(err.value)
    assert files_under(dest) == ["mine.txt"]
    assert (dest / "mine.txt").read_bytes() == b"keep"


@pytest.mark.parametrize(
    "garbage", [b"{not json", b"", b"\xff\xfe", b"[]", b'{"format": "metaflow-checkpointing/1"}']
)
def test_unreadable_manifest_is_an_error_not_a_fresh_start(store, memory, tmp_path, garbage):
    """A corrupt manifest is still picked by the policy and its read raises ManifestError."""
    tiny = write_tree(tmp_path / "src", {"a.txt": b"a"})
    older = store.save(str(tiny), make_scope())
    newer = store.save(str(tiny), make_scope())
    memory.put_bytes(newer.key, garbage)
    picked = store.resolve("fresh", make_scope(attempt=1)).header
    assert picked.key == newer.key  # not silently replaced by `older` or by nothing
    assert picked.key != older.key
    with pytest.raises(ManifestError) as err:
        store.read(picked.key)
    assert newer.key in str(err.value)


def test_truncated_manifest_is_a_manifest_error(store, memory, tmp_path):
    """A manifest cut short (e.g. a bad copy) raises ManifestError naming its key."""
    src = write_tree(tmp_path / "src", sample_spec())
    m = store.save(str(src), make_scope())
    data = memory.get_bytes(m.key)
    memory.put_bytes(m.key, data[: len(data) // 2])
    with pytest.raises(ManifestError, match="unreadable or invalid"):
        store.read(m.key)


def test_unknown_format_version_is_rejected(store, memory, tmp_path):
    """A manifest from an unknown format version is refused with a clear message."""
    m = store.save(str(write_tree(tmp_path / "src", {"a": b"a"})), make_scope())
    _rewrite_manifest(memory, m.key, lambda d: d.update(format="metaflow-checkpointing/99"))
    with pytest.raises(ManifestError, match="format"):
        store.read(m.key)


def test_manifest_copied_to_another_key_is_rejected(store, memory, tmp_path):
    """A manifest moved under another scope's key is detected (it would load the wrong lineage)."""
    m = store.save(str(write_tree(tmp_path / "src", {"a": b"a"})), make_scope())
    other = m.key.replace("/100/7/", "/100/8/")
    memory.put_bytes(other, memory.get_bytes(m.key))
    with pytest.raises(ManifestError, match="tampered"):
        store.read(other)


def test_chunks_not_matching_size_are_rejected(store, memory, tmp_path):
    """A manifest whose chunk lengths do not add up to the file size is invalid."""
    m = store.save(str(write_tree(tmp_path / "src", {"a.txt": b"abc"})), make_scope())
    _rewrite_manifest(memory, m.key, lambda d: d["files"][0].update(size=99))
    with pytest.raises(ManifestError, match="a.txt"):
        store.read(m.key)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../b", "a/./b", "a//b", "", ".", "a\\..\\b"])
def test_escaping_path_in_manifest_is_rejected_before_writing(store, memory, tmp_path, bad):
    """A manifest listing a path outside the checkpoint is refused before anything is written."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a", "z.txt": b"z"})
    m = store.save(str(src), make_scope())
    _rewrite_manifest(memory, m.key, lambda d: d["files"][1].update(path=bad))
    with pytest.raises(ManifestError) as err:
        store.read(m.key)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", ["../evil", "/abs/dir"])
def test_escaping_empty_dir_in_manifest_is_rejected(store, memory, tmp_path, bad):
    """Empty directories listed in a manifest are validated like files."""
    m = store.save(str(write_tree(tmp_path / "src", {"a": b"a"})), make_scope())
    _rewrite_manifest(memory, m.key, lambda d: d.update(dirs=[bad]))
    with pytest.raises(ManifestError):
        store.read(m.key)


def test_escaping_path_never_writes_outside_destination(store, tmp_path):
    """Even a manifest that skipped validation cannot write outside dest; dest stays clean."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    m = store.read(store.save(str(src), make_scope()).key)
    m.files[1].path = "../outside.txt"
    dest = tmp_path / "dest"
    with pytest.raises(ManifestError):
        store.load(m, str(dest))
    assert not (tmp_path / "outside.txt").exists()
    assert not dest.exists() or files_under(dest) == []


def test_symlink_in_destination_cannot_redirect_writes(store, tmp_path):
    """A symlinked directory in dest pointing elsewhere is refused, not written through."""
    src = write_tree(tmp_path / "src", {"a_first.txt": b"a", "link/evil.txt": b"evil"})
    m = store.read(store.save(str(src), make_scope()).key)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "link")
    with pytest.raises(ManifestError, match="link/evil.txt"):
        store.load(m, str(dest))
    assert os.listdir(outside) == []
    assert files_under(dest) == []


@pytest.mark.parametrize(
    "paths", [["a.txt", "a.txt"], ["a", "a/b"]], ids=["duplicate", "file-vs-dir"]
)
def test_conflicting_paths_in_manifest_are_rejected(store, memory, tmp_path, paths):
    """A manifest listing the same path twice, or a file that is also a directory, is invalid."""
    src = write_tree(tmp_path / "src", {"x": b"x", "y": b"y"})
    m = store.save(str(src), make_scope())

    def edit(d):
        d["files"][0]["path"], d["files"][1]["path"] = paths

    _rewrite_manifest(memory, m.key, edit)
    with pytest.raises(ManifestError):
        store.read(m.key)


def test_file_listed_as_empty_dir_is_rejected(store, memory, tmp_path):
    """A manifest listing a path both as a file and as an empty directory is invalid."""
    m = store.save(str(write_tree(tmp_path / "src", {"x": b"x"})), make_scope())
    _rewrite_manifest(memory, m.key, lambda d: d.update(dirs=["x"]))
    with pytest.raises(ManifestError, match="both as a file and as a directory"):
        store.read(m.key)
