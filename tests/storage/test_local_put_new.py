"""``put_new`` on a local store: the metrics log's put, written in place (no temp name and
rename, half the cost of a small ``put_bytes``; ADR 009).  It never replaces an object, leaves
objects as ``put_bytes`` does, and a failed write leaves nothing at the key."""

from __future__ import annotations

import os
import stat

import pytest
from tiny_fs import tiny_filesystem

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage


def _entries(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_put_new_refuses_a_key_that_exists_and_keeps_its_object(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    storage.put_bytes("metrics/a/e.json", b"committed")
    with pytest.raises(StorageError) as info:
        storage.put_new("metrics/a/e.json", b"another")
    assert "FileExistsError" in str(info.value)
    assert str(tmp_path / "store" / "metrics" / "a" / "e.json") in str(info.value)
    assert storage.get_bytes("metrics/a/e.json") == b"committed"


def test_put_new_refuses_a_link_planted_at_the_key(tmp_path):
    """A symlink at the key is not followed out of the store: the write fails."""
    storage = LocalStorage(str(tmp_path / "store"))
    outside = tmp_path / "outside"
    (tmp_path / "store" / "m").mkdir(parents=True)
    os.symlink(outside, tmp_path / "store" / "m" / "e")
    with pytest.raises(StorageError):
        storage.put_new("m/e", b"entry")
    assert not outside.exists()


def test_put_new_leaves_an_object_as_put_bytes_does_whatever_the_umask(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    old = os.umask(0o077)
    try:
        storage.put_new("m/deep/new", b"entry")  # its directories made on the way
        storage.put_bytes("m/deep/put", b"entry")
    finally:
        os.umask(old)
    modes = {
        k: stat.S_IMODE(os.stat(tmp_path / "store" / "m" / "deep" / k).st_mode)
        for k in ("new", "put")
    }
    assert modes == {"new": 0o644, "put": 0o644}
    assert _entries(tmp_path / "store") == ["m/deep/new", "m/deep/put"]  # no temp file
    assert [o.key for o in storage.list("m/deep/new")] == ["m/deep/new"]


def test_put_new_into_a_full_filesystem_leaves_nothing_at_the_key(tmp_path):
    """ENOSPC part-way through the write (a real 64 KiB tmpfs): a StorageError naming the
    object, and neither the part written nor its space is left; other objects are intact."""
    with tiny_filesystem(tmp_path / "fs", "64k") as fs:
        storage = LocalStorage(str(fs / "store"))
        storage.put_new("m/first", b"kept")
        free = os.statvfs(fs).f_bfree
        with pytest.raises(StorageError) as info:
            storage.put_new("m/big", os.urandom(1 << 20))
        assert "No space left on device" in str(info.value)
        assert str(fs / "store" / "m" / "big") in str(info.value)
        assert _entries(fs / "store") == ["m/first"]
        assert storage.get_bytes("m/first") == b"kept"
        assert os.statvfs(fs).f_bfree == free
