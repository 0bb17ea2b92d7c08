"""The local backend's in-kernel save/load path keeps every integrity guarantee."""

from __future__ import annotations

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import digest
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, rand, snapshot


@pytest.fixture
def local(tmp_path):
    return CheckpointStore(LocalStorage(str(tmp_path / "store")), options())


def _tree(root):
    root.mkdir()
    (root / "big.bin").write_bytes(rand(5 * 64 * 1024 + 17, 1))
    (root / "small.txt").write_bytes(b"hello")
    return root


def test_every_stored_blob_matches_its_key(local, tmp_path):
    """Blobs written in-kernel are named by the hash of exactly the bytes stored."""
    m = local.save(str(_tree(tmp_path / "src")), make_scope())
    blobs = [p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == m.stats["blobs_uploaded"] >= 6
    assert all(digest(p.read_bytes()) == p.name for p in blobs)


def test_roundtrip_and_corruption_on_disk(local, tmp_path):
    """Loads copy in-kernel yet still verify: a flipped byte on disk is a named integrity error."""
    src = _tree(tmp_path / "src")
    m = local.save(str(src), make_scope())
    local.load(local.read(m.key), str(tmp_path / "ok"))
    assert snapshot(tmp_path / "ok") == snapshot(src)
    blob = tmp_path / "store" / "blobs" / m.files[0].chunks[2].blob[:2] / m.files[0].chunks[2].blob
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="big.bin"):
        local.load(local.read(m.key), str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "big.bin").exists()


def test_store_survives_removal_of_its_directories(local, tmp_path):
    """A blob directory removed behind the store's back (e.g. a cleanup) is recreated."""
    import shutil

    src = _tree(tmp_path / "src")
    local.save(str(src), make_scope())
    shutil.rmtree(tmp_path / "store")
    # Same backend object (it remembers the directories it made), new store: nothing is
    # known to be stored any more.
    fresh = CheckpointStore(local.storage, options())
    m = fresh.save(str(src), make_scope(attempt=1))
    fresh.load(fresh.read(m.key), str(tmp_path / "again"))
    assert snapshot(tmp_path / "again") == snapshot(src)
