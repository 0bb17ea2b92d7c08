"""Re-saving unchanged large files skips reading them, but never misses a real change."""

from __future__ import annotations

import os
import time

from .helpers import make_scope, rand, snapshot

CHUNK = 64 * 1024


def _big_tree(root, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / ("w%d.bin" % i)).write_bytes(rand(3 * CHUNK + 100, seed + i))
    return root


def test_unchanged_large_files_are_not_read_again(store, tmp_path):
    """An unchanged re-save in the same process reads 0 bytes and uploads 0 bytes."""
    src = _big_tree(tmp_path / "src")
    time.sleep(0.2)  # files older than the racy window
    first = store.save(str(src), make_scope())
    again = store.save(str(src), make_scope())
    assert first.stats["bytes_read"] == first.size
    assert again.stats["bytes_read"] == 0
    assert again.stats["bytes_uploaded"] == 0
    assert again.stats["bytes_deduplicated"] == again.size
    assert [f.chunks for f in again.files] == [f.chunks for f in first.files]


def test_same_size_change_with_restored_mtime_is_detected(store, tmp_path):
    """Rewriting a file in place and resetting its mtime (e.g. `touch -d`) still re-hashes it."""
    src = _big_tree(tmp_path / "src")
    time.sleep(0.2)
    store.save(str(src), make_scope())
    target = src / "w1.bin"
    before = os.stat(target)
    with open(target, "r+b") as f:
        f.seek(CHUNK + 5)
        f.write(b"CHANGED")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = store.save(str(src), make_scope())
    assert second.stats["bytes_read"] == target.stat().st_size
    out = tmp_path / "out"
    store.load(store.read(second.key), str(out))
    assert snapshot(out) == snapshot(src)


def test_recently_written_files_are_hashed_again(store, tmp_path):
    """A file modified just before a save may change in the same timestamp tick: not cached."""
    src = _big_tree(tmp_path / "src")
    store.save(str(src), make_scope())  # written moments ago: inside the racy window
    second = store.save(str(src), make_scope())
    assert second.stats["bytes_read"] == second.size
    assert second.stats["bytes_uploaded"] == 0
