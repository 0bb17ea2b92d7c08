"""The local backend's in-kernel save/load path keeps every integrity guarantee."""

from __future__ import annotations

from dataclasses import replace

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import digest
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import CountingStorage, make_scope, options, rand, snapshot


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


#: Packs of files up to 512 KiB, in blobs of up to 1 MiB.
PACKS = options(chunk_size=1 << 20, small_size=512 << 10)


@pytest.mark.parametrize("path", ["buffer", "kernel"])
def test_packs_staged_in_the_store_equal_packs_read_through_memory(tmp_path, monkeypatch, path):
    """Small files are packed into a staged file of the store: through one buffer that hashes
    each file and the pack as it writes them ("buffer", where the filesystem cannot clone:
    no copy_file_range at all), or, where it can ("kernel", forced here), each member over
    64 KiB copied by the kernel and hashed from the staged pack.  Either gives the same blobs
    and per-file digests as the read-through-memory path, which a kernel refusing
    copy_file_range (EXDEV, injected) still gets, and all load back intact."""
    import errno
    import os

    from metaflow_extensions.checkpointing.plugins.checkpointing.core import packing

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):  # tiny members (staged through memory) and larger ones (copied)
        size = 1000 + 37 * i if i % 3 else 70_000 + 9_000 * i
        (src / ("f%02d.bin" % i)).write_bytes(rand(size, i))
    fast = CheckpointStore(LocalStorage(str(tmp_path / "fast")), PACKS)
    real_copy, copies = os.copy_file_range, []

    def counted(*args, **kwargs):
        copies.append(args[2])
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(os, "copy_file_range", counted)
    if path == "kernel":
        monkeypatch.setattr(packing, "pack_clones", lambda members, fd: True)
    m_fast = fast.save(str(src), make_scope())
    # The kernel path: each member over 64 KiB copied by the kernel, no tiny one; the buffer
    # path (this test's ext4 or tmpfs cannot clone): none.
    assert sorted(copies) == sorted(
        n
        for n in (1000 + 37 * i if i % 3 else 70_000 + 9_000 * i for i in range(40))
        if n > 64 << 10 and path == "kernel"
    )
    monkeypatch.undo()

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(packing, "pack_clones", lambda members, fd: True)  # tries the kernel
    slow = CheckpointStore(LocalStorage(str(tmp_path / "slow")), PACKS)
    m_slow = slow.save(str(src), make_scope())
    monkeypatch.undo()

    def layout(m):
        return [
            (f.path, f.digest, [(c.blob, c.offset, c.length) for c in f.chunks]) for f in m.files
        ]

    assert layout(m_fast) == layout(m_slow)
    assert len({c.blob for f in m_fast.files for c in f.chunks}) < len(m_fast.files)  # packed
    for f in m_fast.files:
        assert f.digest == digest((src / f.path).read_bytes())
    for name, store in (("fast", fast), ("slow", slow)):
        blobs = [p for p in (tmp_path / name / "blobs").rglob("*") if p.is_file()]
        assert blobs and all(digest(p.read_bytes()) == p.name for p in blobs)
        store.load(
            store.read(m_fast.key if name == "fast" else m_slow.key), str(tmp_path / name / "out")
        )
        assert snapshot(tmp_path / name / "out") == snapshot(src)


@pytest.mark.parametrize(
    "member, when, how, path",
    [
        (member, "before", how, path)
        for member in ("copied", "staged")
        for how in ("grow", "shrink", "replace")
        for path in ("buffer", "kernel")
    ]
    + [("copied", "during", how, "kernel") for how in ("grow", "shrink", "rewrite")]
    + [
        (member, "during", how, "buffer")
        for member in ("copied", "staged")
        for how in ("grow", "shrink", "rewrite")
    ],
)
def test_a_packed_file_changing_while_it_is_staged_fails_the_save(
    tmp_path, monkeypatch, member, when, how, path
):
    """A pack member over 64 KiB (copied by the kernel where the store's filesystem clones) or
    tiny (staged through memory), or any member passing through the hashing buffer, is checked
    like one read through memory: a file that grew, shrank, was rewritten or replaced since the
    scan ("before") or while it was copied ("during": changed after copy_file_range or the
    read returned, before the fstat on the descriptor read from) fails the save."""
    import os

    from metaflow_extensions.checkpointing.plugins.checkpointing.core import packing
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scan import scan
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import SaveStats
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.upload import (
        BlobWriter,
        upload_tree,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointConfigError,
    )

    src = tmp_path / "src"
    src.mkdir()
    size = 300_000 if member == "copied" else 3000
    (src / "a.bin").write_bytes(rand(size, 1))
    (src / "b.txt").write_bytes(b"b")
    files, _dirs, _kind = scan(str(src))
    path_ = src / "a.bin"

    def change():
        if how == "grow":
            with open(path_, "ab") as f:
                f.write(b"more")
        elif how == "shrink":
            os.truncate(path_, size - 1)
        elif how == "rewrite":
            with open(path_, "r+b") as f:
                f.write(b"EVIL")
        else:
            other = src / "other"
            other.write_bytes(rand(size, 2))
            st = os.stat(path_)
            os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(other, path_)

    if path == "kernel":
        monkeypatch.setattr(packing, "pack_clones", lambda members, fd: True)
    if when == "before":
        change()
    elif path == "kernel":
        real = packing.copy_range

        def copy_then_change(*args, **kwargs):
            real(*args, **kwargs)
            change()

        monkeypatch.setattr(packing, "copy_range", copy_then_change)
    else:
        real_read = os.preadv

        def read_then_change(fd, buffers, offset):
            n = real_read(fd, buffers, offset)
            if n == size:  # a.bin's read (b.txt is one byte)
                change()
            return n

        monkeypatch.setattr(os, "preadv", read_then_change)
    storage = LocalStorage(str(tmp_path / "store"))
    with pytest.raises(CheckpointConfigError, match=r"a\.bin changed while save\(\) was reading"):
        upload_tree(files, BlobWriter(storage), PACKS, SaveStats())
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]  # no blob, no temp


@pytest.mark.parametrize("members", ["copied", "staged"])
def test_a_store_filling_up_during_a_packed_save_is_a_storage_error_naming_the_store(
    tmp_path, members
):
    """The store's filesystem filling up while a pack is assembled in the kernel is a
    ``StorageError`` naming the store, never "cannot read" the user's file (a config error)
    nor a bare ``OSError``: members over 64 KiB are copied with copy_file_range, whose errno
    does not say which side failed (source and store on one tmpfs, so the kernel copies);
    tiny ones are staged and written with pwrite.  No temp is left in the store."""
    from tiny_fs import tiny_filesystem

    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    with tiny_filesystem(tmp_path / "fs", "6m" if members == "copied" else "1m") as fs:
        src = (fs if members == "copied" else tmp_path) / "src"
        src.mkdir()
        count, size = (20, 200_000) if members == "copied" else (400, 4096)
        for i in range(count):
            (src / ("f%03d.bin" % i)).write_bytes(rand(size, i))
        store = CheckpointStore(LocalStorage(str(fs / "store")), PACKS)
        with pytest.raises(StorageError) as err:
            store.save(str(src), make_scope())
        message = str(err.value)
        assert "No space left on device" in message and str(fs / "store") in message
        assert "cannot read" not in message
        assert not [p for p in (fs / "store").rglob(".mfckpt-tmp-*")]


def test_a_store_that_cannot_be_mapped_saves_and_loads_through_memory(tmp_path, monkeypatch):
    """On a filesystem without mmap (FUSE direct_io and some network filesystems refuse it
    with ENODEV, injected), saves and loads of a local store take the read-through-memory path:
    every byte still hashed and verified, the load equal to the source."""
    import errno

    from metaflow_extensions.checkpointing.plugins.checkpointing.core import download_local
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage import local as local_mod

    def no_mmap(*_args):
        raise OSError(errno.ENODEV, "No such device")

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(rand(5 * 64 * 1024 + 17, 1))  # chunks
    for i in range(5):  # packed: tiny members and ones copied in the kernel
        (src / ("s%d.bin" % i)).write_bytes(rand(100 + 70_000 * (i % 2), i))
    monkeypatch.setattr(local_mod, "map_readonly", no_mmap)
    monkeypatch.setattr(download_local, "map_readonly", no_mmap)
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    blobs = [p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(digest(p.read_bytes()) == p.name for p in blobs)
    store.load(store.read(m.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


@pytest.mark.parametrize("when", ["before its bytes are written", "after its hash"])
def test_a_blob_rewritten_in_place_during_a_load_never_lands_unverified(
    tmp_path, monkeypatch, when
):
    """Another process rewriting a stored blob in place while a load maps it (a repair tool,
    rsync --inplace into the store): the load either refuses it (a named integrity error,
    nothing in place) or writes exactly the saved bytes, never the rewritten ones.  The blob is
    hashed after its slices are written, so bytes changed before or while they are written
    fail it."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import download_local

    src = tmp_path / "src"
    src.mkdir()
    saved = rand(300_000, 5)
    (src / "model.bin").write_bytes(saved)
    store = CheckpointStore(
        LocalStorage(str(tmp_path / "store")), options(chunk_size=1 << 20, small_size=0)
    )
    m = store.save(str(src), make_scope())
    blob = m.files[0].chunks[0].blob
    path = tmp_path / "store" / "blobs" / blob[:2] / blob
    hook = "place" if when.startswith("before") else "_check_slice"
    real = getattr(download_local, hook)
    rewrites = []

    def rewrite_then(*args, **kwargs):
        if not rewrites:
            with open(path, "r+b") as f:  # in place: the same inode, seen by the mapping
                f.write(b"EVIL")
            rewrites.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(download_local, hook, rewrite_then)
    dest = tmp_path / "out"
    try:
        store.load(store.read(m.key), str(dest))
    except CheckpointIntegrityError as exc:
        assert "model.bin" in str(exc) and not (dest / "model.bin").exists()
    else:
        assert (dest / "model.bin").read_bytes() == saved
    assert rewrites


def test_a_blob_failing_after_its_bytes_were_written_leaves_no_stale_byte(tmp_path, monkeypatch):
    """A blob that fails its hash after its slices were written (changed in place meanwhile) and
    verifies when the generic path reads it again: the file holds exactly the saved bytes, even
    in an all-zero block that the generic path leaves unwritten and even when every ``pwrite``
    writes only part of its bytes (short writes are legal: each is finished)."""
    import os

    from metaflow_extensions.checkpointing.plugins.checkpointing.core import download_local

    src = tmp_path / "src"
    src.mkdir()
    saved = bytes(64 << 10) + rand(200_000, 7)  # the first 64 KiB block is all zeros
    (src / "model.bin").write_bytes(saved)
    storage = LocalStorage(str(tmp_path / "store"))
    store = CheckpointStore(storage, options(chunk_size=128 << 10, small_size=0))
    m = store.save(str(src), make_scope())
    blob = m.files[0].chunks[0].blob
    path = tmp_path / "store" / "blobs" / blob[:2] / blob
    good = path.read_bytes()
    real_place, real_get, real_pwrite = download_local.place, storage.get_bytes, os.pwrite

    def rewrite_then_place(*args, **kwargs):
        if path.read_bytes() == good:
            with open(path, "r+b") as f:  # in place, before the fast path writes the slice
                f.write(b"EVIL")
        return real_place(*args, **kwargs)

    def repaired_get(key, *args, **kwargs):
        path.write_bytes(good)  # the generic path reads it again: verified this time
        return real_get(key, *args, **kwargs)

    monkeypatch.setattr(download_local, "place", rewrite_then_place)
    monkeypatch.setattr(storage, "get_bytes", repaired_get)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, pos: real_pwrite(fd, data[:3], pos))
    store.load(store.read(m.key), str(tmp_path / "out"))
    assert (tmp_path / "out" / "model.bin").read_bytes() == saved


@pytest.mark.parametrize("path", ["buffer", "kernel"])
@pytest.mark.parametrize("workers", [1, 4])
def test_packs_from_a_filesystem_the_kernel_cannot_copy_from_are_staged_once(
    tmp_path, monkeypatch, workers, path
):
    """A source on another filesystem than the local store (copy_file_range: EXDEV, injected).
    Through the hashing buffer ("buffer": the store cannot clone from it), no pack asks the
    kernel.  Where the kernel path is taken ("kernel", forced), the first pack finds out, and
    every pack started later on that filesystem is read through memory at once instead of
    staging its members in the kernel again (packs already in flight on other workers try once
    each).  The blobs are the same."""
    import errno
    import os

    from metaflow_extensions.checkpointing.plugins.checkpointing.core import packing

    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):  # ~3 files of 300 KB per 1 MiB pack: 7 packs
        (src / ("f%02d.bin" % i)).write_bytes(rand(300_000, i))
    tries = []

    def refuse(*_args, **_kwargs):
        tries.append(1)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    if path == "kernel":
        monkeypatch.setattr(packing, "pack_clones", lambda members, fd: True)
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), replace(PACKS, workers=workers))
    m = store.save(str(src), make_scope())
    assert len({c.blob for f in m.files for c in f.chunks}) == 7
    if path == "buffer":
        assert tries == []
    else:
        assert len(tries) == 1 if workers == 1 else 1 <= len(tries) <= workers < 7
    monkeypatch.undo()
    store.load(store.read(m.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_a_load_of_several_large_files_starts_on_different_files(tmp_path):
    """The blobs of a load are fetched first chunk of every file, then second chunk...: workers
    that start together write different files, not the chunks of one (whose writes serialise
    on the file's inode lock, the waiters spinning on the CPU a hash would use)."""
    src = tmp_path / "src"
    src.mkdir()
    for n in range(3):
        (src / ("f%d.bin" % n)).write_bytes(rand(3 * 64 * 1024, 10 + n))  # 3 chunks each
    storage = CountingStorage()
    store = CheckpointStore(storage, options(workers=1))
    m = store.save(str(src), make_scope())
    storage.gets.clear()
    store.load(m, str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)
    files = sorted(m.files, key=lambda f: f.path)
    assert [len(f.chunks) for f in files] == [3, 3, 3]
    got = [key.rsplit("/", 1)[-1] for key in storage.gets]
    blobs = [b for b in got if b in {c.blob for f in files for c in f.chunks}]
    assert blobs == [f.chunks[k].blob for k in range(3) for f in files]
