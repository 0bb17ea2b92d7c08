"""Save/load roundtrips: what a user saves is exactly what a later load gives back."""

from __future__ import annotations

import os
import threading
import time

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import (
    CHUNK,
    files_under,
    make_scope,
    options,
    rand,
    sample_spec,
    snapshot,
    write_tree,
)


def test_directory_roundtrip_is_identical(any_store, tmp_path):
    """Nested dirs, empty dirs, empty/small/multi-chunk files and modes all come back as saved."""
    src = write_tree(tmp_path / "src", sample_spec())
    m = any_store.save(str(src), make_scope())
    dest = tmp_path / "dest"
    any_store.load(any_store.read(m.key), str(dest))
    assert snapshot(dest) == snapshot(src)
    assert os.stat(dest / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(dest / "secret.key").st_mode & 0o777 == 0o600
    assert (dest / "logs" / "empty_dir").is_dir() and not os.listdir(dest / "logs" / "empty_dir")
    assert (dest / "empty.txt").stat().st_size == 0


def test_large_files_are_chunked_and_small_files_packed(store, tmp_path):
    """Big files are split into chunk_size pieces; small files share blobs instead of one each."""
    src = write_tree(tmp_path / "src", sample_spec())
    m = store.read(store.save(str(src), make_scope()).key)
    by_path = {f.path: f for f in m.files}
    assert [c.length for c in by_path["model/weights.bin"].chunks] == [CHUNK] * 4 + [1234]
    assert [c.length for c in by_path["model/exact.bin"].chunks] == [CHUNK, CHUNK]
    assert by_path["empty.txt"].chunks == []
    small = ["model/config.json", "model/sub/deep/leaf.txt", "optimizer.pt", "run.sh"]
    assert len({by_path[p].chunks[0].blob for p in small}) == 1
    assert all(by_path[p].digest for p in small)


def test_single_file_loads_under_its_basename(any_store, tmp_path):
    """save(path=<file>) loads as <dest>/<basename>, nothing else."""
    f = tmp_path / "weights.bin"
    f.write_bytes(rand(3 * CHUNK + 5, 1))
    m = any_store.save(str(f), make_scope())
    dest = tmp_path / "dest"
    any_store.load(any_store.read(m.key), str(dest))
    assert files_under(dest) == ["weights.bin"]
    assert (dest / "weights.bin").read_bytes() == f.read_bytes()


def test_loaded_files_are_independent_copies(tmp_path):
    """Loaded files are real files: editing one never alters the store or a later load."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", sample_spec())
    m = store.read(store.save(str(src), make_scope()).key)
    first = tmp_path / "first"
    store.load(m, str(first))
    for rel in files_under(first):
        p = first / rel
        assert not p.is_symlink()
        assert p.stat().st_nlink == 1
    with open(first / "model" / "weights.bin", "r+b") as f:
        f.write(b"CLOBBERED")
    (first / "model" / "config.json").write_bytes(b"changed")
    second = tmp_path / "second"
    store.load(m, str(second))
    assert snapshot(second) == snapshot(src)


def test_load_over_existing_destination_replaces_files(store, tmp_path):
    """Loading into a non-empty directory overwrites checkpoint files and keeps other files."""
    src = write_tree(tmp_path / "src", {"a.txt": b"new", "b.bin": rand(CHUNK + 1, 2)})
    m = store.read(store.save(str(src), make_scope()).key)
    dest = write_tree(tmp_path / "dest", {"a.txt": b"old contents", "mine.txt": b"keep"})
    store.load(m, str(dest))
    assert (dest / "a.txt").read_bytes() == b"new"
    assert (dest / "mine.txt").read_bytes() == b"keep"
    assert (dest / "b.bin").read_bytes() == (src / "b.bin").read_bytes()


class _ConcurrencyProbe(MemoryStorage):
    """Memory storage recording the most puts/gets ever in flight at once."""

    def __init__(self):
        super().__init__()
        self.active = 0
        self.peak = 0
        self._probe = threading.Lock()

    def _enter(self):
        with self._probe:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.002)  # widen the window so overlapping calls would be observed

    def _leave(self):
        with self._probe:
            self.active -= 1

    def _put_bytes(self, key, data):
        if key.startswith("blobs/"):
            self._enter()
            try:
                return super()._put_bytes(key, data)
            finally:
                self._leave()
        return super()._put_bytes(key, data)

    def _get_bytes(self, key, start, length):
        self._enter()
        try:
            return super()._get_bytes(key, start, length)
        finally:
            self._leave()


def test_bounded_inflight_large_file_roundtrip(tmp_path):
    """A file of many chunks saves and loads with inflight=2, never holding more than 2 buffers."""
    storage = _ConcurrencyProbe()
    store = CheckpointStore(storage, options(workers=8, inflight=2))
    big = rand(20 * CHUNK + 77, 3)
    src = write_tree(tmp_path / "src", {"big.bin": big, "small.txt": b"x"})
    m = store.save(str(src), make_scope())
    assert m.stats["blobs_uploaded"] == 22
    assert 1 <= storage.peak <= 2
    storage.peak = 0
    dest = tmp_path / "dest"
    store.load(store.read(m.key), str(dest))
    assert 1 <= storage.peak <= 2
    assert (dest / "big.bin").read_bytes() == big


def test_bounded_inflight_roundtrip_on_local_storage(tmp_path):
    """inflight=1 with one worker still moves a multi-chunk file correctly through local disk."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "s")), options(workers=1, inflight=1))
    src = write_tree(tmp_path / "src", {"big.bin": rand(9 * CHUNK + 3, 4)})
    m = store.save(str(src), make_scope())
    dest = tmp_path / "dest"
    store.load(store.read(m.key), str(dest))
    assert snapshot(dest) == snapshot(src)
