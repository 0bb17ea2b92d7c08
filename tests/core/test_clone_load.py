"""Local loads clone large files where the filesystem can (loop-mounted XFS and btrfs), copy
elsewhere (ext4, tmpfs, across filesystems), and verify what they load either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.clone import shared_bytes
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, rand, snapshot

KIB, MIB = 1 << 10, 1 << 20
#: 1 MiB chunks, files under 64 KiB packed: a 3 MiB file is three blobs of one chunk each.
OPTS = {"chunk_size": MIB, "small_size": 64 * KIB}


def _store(root: Path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(str(root / "store")), options(**OPTS))


def _tree(root: Path) -> Path:
    root.mkdir()
    (root / "big.bin").write_bytes(rand(3 * MIB + 5000, 1))  # 3 chunks, unaligned tail
    (root / "one.bin").write_bytes(rand(700 * KIB + 3, 2))  # one chunk, its own blob
    (root / "sub").mkdir()
    for k in range(5):
        (root / "sub" / ("s%d.txt" % k)).write_bytes(rand(3000 + k, 10 + k))  # one pack
    return root


def _blob(store_root: Path, name: str) -> Path:
    return store_root / "store" / "blobs" / name[:2] / name


def test_large_files_are_cloned_and_small_ones_copied(reflink_dir):
    """Every block of a chunked file and of a one-chunk file is shared with the store (their
    unaligned last blocks included); files packed together are copied."""
    store = _store(reflink_dir)
    src = _tree(reflink_dir / "src")
    m = store.save(str(src), make_scope())
    store.load(store.read(m.key), str(reflink_dir / "out"))
    assert snapshot(reflink_dir / "out") == snapshot(src)
    for name in ("big.bin", "one.bin"):
        size = (src / name).stat().st_size
        assert shared_bytes(str(reflink_dir / "out" / name)) >= size
    assert shared_bytes(str(reflink_dir / "out" / "sub" / "s0.txt")) == 0


def test_writing_a_loaded_file_leaves_the_store_intact(reflink_dir):
    """A clone is copy-on-write: the user's write changes their file only, and the next load
    of the same checkpoint verifies and gives the saved bytes."""
    store = _store(reflink_dir)
    src = _tree(reflink_dir / "src")
    m = store.save(str(src), make_scope())
    store.load(store.read(m.key), str(reflink_dir / "a"))
    with open(reflink_dir / "a" / "big.bin", "r+b") as f:
        f.seek(MIB + 10)
        f.write(b"the user's own change")
    blobs = {c.blob: _blob(reflink_dir, c.blob).read_bytes() for f in m.files for c in f.chunks}
    store.load(store.read(m.key), str(reflink_dir / "b"))
    assert snapshot(reflink_dir / "b") == snapshot(src)
    assert all(_blob(reflink_dir, b).read_bytes() == data for b, data in blobs.items())


def test_a_corrupt_stored_chunk_is_refused_although_cloned(reflink_dir):
    """Cloning copies no byte through the process, yet a flipped byte in the store is still an
    integrity error naming the file, and nothing is left in the target."""
    store = _store(reflink_dir)
    src = _tree(reflink_dir / "src")
    m = store.save(str(src), make_scope())
    big = next(f for f in m.files if f.path == "big.bin")
    blob = _blob(reflink_dir, big.chunks[1].blob)
    data = bytearray(blob.read_bytes())
    data[4096] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="big.bin"):
        store.load(store.read(m.key), str(reflink_dir / "bad"))
    assert not (reflink_dir / "bad").exists()


class _HealingStorage(LocalStorage):
    """A store whose damaged blob is repaired before a second read: the fault a load's second
    fetch exists for (a flip that is not there at rest)."""

    repairs: dict[str, bytes] = {}

    def _get_bytes(self, key, start, length):
        for path, good in self.repairs.items():
            if path.endswith(key.rsplit("/", 1)[-1]):  # this blob's read, not a manifest's
                Path(path).write_bytes(good)
        return super()._get_bytes(key, start, length)


@pytest.mark.parametrize("name", ["big.bin", "one.bin"])
def test_a_clone_of_a_blob_that_fails_verification_is_not_left_in_the_file(reflink_dir, name):
    """The clone is made before the blob is hashed; when the hash fails and the second fetch
    gives good bytes, those replace the cloned ones, all-zero blocks included (which the write
    path leaves as holes): the loaded file is exactly what was saved."""
    src = reflink_dir / "src"
    src.mkdir()
    # Zero blocks between data: the damage goes into a zero block of the stored chunk.
    (src / "big.bin").write_bytes(rand(MIB, 1) + bytes(MIB) + rand(MIB, 2))
    (src / "one.bin").write_bytes(bytes(512 * KIB) + rand(300 * KIB, 3))
    storage = _HealingStorage(str(reflink_dir / "store"))
    store = CheckpointStore(storage, options(**OPTS))
    m = store.save(str(src), make_scope())
    entry = next(f for f in m.files if f.path == name)
    blob = _blob(reflink_dir, entry.chunks[1 if name == "big.bin" else 0].blob)
    good = blob.read_bytes()
    bad = bytearray(good)
    bad[100 * KIB] ^= 0x5A
    blob.write_bytes(bytes(bad))
    _HealingStorage.repairs = {str(blob): good}
    try:
        store.load(store.read(m.key), str(reflink_dir / "out"))
    finally:
        _HealingStorage.repairs = {}
    assert snapshot(reflink_dir / "out") == snapshot(src)


@pytest.mark.parametrize("where", ["ext4", "tmpfs", "across"])
def test_without_reflink_the_same_load_copies(where, reflink_mounts, tmp_path):
    """On the regular temp directory (ext4), on tmpfs, and from a store on XFS into ext4, the
    load copies: the same files, no block shared."""
    if where == "tmpfs":
        base = Path("/dev/shm") / ("clone-load-%d" % os.getpid())
        base.mkdir()
    else:
        base = tmp_path
    try:
        store_root = reflink_mounts["xfs"] / tmp_path.name if where == "across" else base
        store_root.mkdir(exist_ok=True)
        store = _store(store_root)
        src = _tree(store_root / "src")
        m = store.save(str(src), make_scope())
        store.load(store.read(m.key), str(base / "out"))
        assert snapshot(base / "out") == snapshot(src)
        assert shared_bytes(str(base / "out" / "big.bin")) == 0
    finally:
        if where == "tmpfs":
            import shutil

            shutil.rmtree(base)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 4095, 4096, 64 * KIB, 64 * KIB + 1, MIB - 1, MIB, MIB + 4097])
        | st.integers(0, 3 * MIB),
        min_size=1,
        max_size=4,
    ),
    zeros=st.booleans(),
)
def test_any_sizes_load_back_exactly(reflink_mounts, tmp_path_factory, sizes, zeros):
    """Round trip on XFS for sizes around blocks and chunks, with and without zero runs: what
    is loaded is what was saved, whatever was cloned and whatever copied."""
    base = reflink_mounts["xfs"] / tmp_path_factory.mktemp("prop").name
    base.mkdir()
    src = base / "src"
    src.mkdir()
    for k, n in enumerate(sizes):
        data = bytearray(rand(n, k))
        if zeros and n > 2 * 64 * KIB:
            data[64 * KIB : 2 * 64 * KIB] = bytes(64 * KIB)
        (src / ("f%d" % k)).write_bytes(bytes(data))
    store = _store(base)
    m = store.save(str(src), make_scope())
    store.load(store.read(m.key), str(base / "out"))
    assert snapshot(base / "out") == snapshot(src)


def test_chunks_off_block_boundaries_are_copied(reflink_dir):
    """A chunk size that is no multiple of the block size puts later chunks off block
    boundaries: those are copied, the first is cloned, the file loads exactly."""
    store = CheckpointStore(
        LocalStorage(str(reflink_dir / "store")),
        options(chunk_size=64 * KIB + 512, small_size=16 * KIB),
    )
    src = reflink_dir / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(rand(5 * 64 * KIB, 7))
    m = store.save(str(src), make_scope())
    store.load(store.read(m.key), str(reflink_dir / "out"))
    assert snapshot(reflink_dir / "out") == snapshot(src)
    assert 64 * KIB <= shared_bytes(str(reflink_dir / "out" / "f.bin")) < 5 * 64 * KIB


class _WrittenBlobs(LocalStorage):
    """A local store that writes every blob through ``put_bytes`` (as when the kernel cannot
    copy ranges): all-zero chunks are stored as written zero blocks, not holes."""

    def ingest_range(self, *args, **kwargs):
        return None


def test_sparse_files_stay_sparse_when_cloned(reflink_dir):
    """Only a chunk's data runs are cloned: a mostly-empty disk image loads with about as few
    blocks as it has data, even from blobs holding their zeros as written blocks."""
    store = CheckpointStore(_WrittenBlobs(str(reflink_dir / "store")), options(**OPTS))
    src = reflink_dir / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(8 * MIB)
        f.seek(5 * MIB + 100)
        f.write(rand(5000, 1))
    m = store.save(str(src), make_scope())
    zeros = next(c.blob for c in m.files[0].chunks)
    assert os.stat(_blob(reflink_dir, zeros)).st_blocks * 512 >= MIB  # zeros written, no hole
    store.load(store.read(m.key), str(reflink_dir / "out"))
    assert snapshot(reflink_dir / "out") == snapshot(src)
    assert os.stat(reflink_dir / "out" / "disk.img").st_blocks * 512 <= 128 * KIB
    assert shared_bytes(str(reflink_dir / "out" / "disk.img")) > 0
