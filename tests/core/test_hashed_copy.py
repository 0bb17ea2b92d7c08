"""Saves into a local store hash the bytes as they copy them (``oscopy.copy_hashing``,
``core/packing.py``) where the filesystem cannot clone, and clone where it can: either way
every blob is named by the hash of exactly the bytes stored, and a file changing while it is
read fails the save."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import upload
from metaflow_extensions.checkpointing.plugins.checkpointing.core.packing import (
    pack_clones,
    stream_pack,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scan import scan
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (
    SaveStats,
    digest,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.clone import shared_bytes
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.oscopy import (
    PIECE,
    copy_hashing,
)

from .helpers import make_scope, options, rand, snapshot

KIB, MIB = 1 << 10, 1 << 20
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    size=st.integers(1, 3 * PIECE + 5),
    start=st.integers(0, PIECE + 3),
    length=st.integers(1, 3 * PIECE),
    at=st.integers(0, 5000),
)
def test_a_hashed_copy_writes_and_hashes_exactly_the_range(tmp_path, size, start, length, at):
    """Any range, across piece boundaries or not, lands at its offset and is hashed as BLAKE3
    of the whole range."""
    start, length = min(start, size - 1), min(length, size - min(start, size - 1))
    data = rand(size, size)
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        hasher = digest.new()
        copy_hashing(src, dst, length, start, at, hasher, what="src")
    finally:
        os.close(src)
        os.close(dst)
    assert hasher.hexdigest() == digest(data[start : start + length])
    assert (tmp_path / "dst").read_bytes() == bytes(at) + data[start : start + length]


def test_a_hashed_copy_of_a_file_that_shrank_names_it(tmp_path):
    (tmp_path / "src").write_bytes(rand(PIECE + 10, 1))
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError, match="src ended 20 bytes early"):
            copy_hashing(src, dst, PIECE + 30, 0, 0, digest.new(), what="src")
    finally:
        os.close(src)
        os.close(dst)


@SETTINGS
@given(
    sizes=st.lists(
        st.sampled_from([1, 100, 4096, 70_000, PIECE - 1, PIECE, PIECE + 7, 2 * PIECE + 3]),
        min_size=1,
        max_size=8,
    )
)
def test_a_streamed_pack_is_the_concatenation_and_hashes_each_member(tmp_path, sizes):
    """Members of any sizes (smaller than the buffer, filling it, larger than it): the staged
    pack holds them in order, its digest is the pack's, each member's is its own."""
    d = tmp_path / ("src-%d" % len(list(tmp_path.iterdir())))
    d.mkdir()
    blobs = [rand(n, i) for i, n in enumerate(sizes)]
    for i, data in enumerate(blobs):
        (d / ("m%02d" % i)).write_bytes(data)
    files, _dirs, _kind = scan(str(d))
    files.sort(key=lambda f: f.rel)
    members, pos = [], 0
    for f in files:
        members.append((f, pos, f.size))
        pos += f.size
    out = d.with_suffix(".pack")
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert not pack_clones(members, fd)  # ext4 or tmpfs: nothing clones here
        h, own = stream_pack(members, fd)
    finally:
        os.close(fd)
    whole = b"".join(blobs)
    assert out.read_bytes() == whole and h == digest(whole)
    assert own == [digest(b) for b in blobs]


@pytest.mark.parametrize("how", ["grow", "shrink", "rewrite"])
def test_a_large_packed_file_changing_during_its_streamed_read_fails_the_save(
    tmp_path, monkeypatch, how
):
    """With a small-file size above the buffer's, a member larger than the buffer is read in
    pieces: changed between two of them, the save fails naming it, and nothing is stored."""
    src = tmp_path / "src"
    src.mkdir()
    size = 2 * PIECE + 100
    (src / "a.bin").write_bytes(rand(size, 1))
    (src / "b.txt").write_bytes(b"b")
    files, _dirs, _kind = scan(str(src))
    real_read = os.preadv

    def read_then_change(fd, buffers, offset):
        n = real_read(fd, buffers, offset)
        if offset == 0 and n == PIECE:  # a.bin's first piece (b.txt is one byte)
            path = src / "a.bin"
            if how == "grow":
                with open(path, "ab") as f:
                    f.write(b"more")
            elif how == "shrink":
                os.truncate(path, size - 1)
            else:
                with open(path, "r+b") as f:
                    f.write(b"EVIL")
        return n

    monkeypatch.setattr(os, "preadv", read_then_change)
    storage = LocalStorage(str(tmp_path / "store"))
    opts = options(chunk_size=4 * MIB, small_size=4 * MIB, workers=1)
    with pytest.raises(CheckpointConfigError, match=r"a\.bin changed while save\(\) was reading"):
        upload.upload_tree(files, upload.BlobWriter(storage), opts, SaveStats())
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]


def test_a_local_save_where_nothing_clones_hashes_as_it_copies(tmp_path, monkeypatch):
    """On ext4 or tmpfs a save's chunks and packs go through the hashing buffer: the kernel
    is never asked to copy (one failed clone attempt per pair of filesystems), every blob is
    named by its bytes' hash, and the checkpoint loads back intact."""
    real_copy, copies = os.copy_file_range, []

    def counted(*args, **kwargs):
        copies.append(args[2])
        return real_copy(*args, **kwargs)

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(rand(3 * MIB + 5, 1))  # 4 chunks
    for i in range(30):
        (src / ("s%02d.bin" % i)).write_bytes(rand(100 + 9000 * i, i))  # packs
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options(chunk_size=MIB))
    monkeypatch.setattr(os, "copy_file_range", counted)
    m = store.save(str(src), make_scope())
    monkeypatch.undo()
    assert copies == []
    blobs = [p for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == m.stats["blobs_uploaded"] > 4
    assert all(digest(p.read_bytes()) == p.name for p in blobs)
    store.load(store.read(m.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


def _blob(root: Path, name: str) -> Path:
    return root / "store" / "blobs" / name[:2] / name


def test_a_save_where_the_filesystem_clones_shares_the_sources_blocks(reflink_dir):
    """On XFS and btrfs a large file's chunks are cloned into the store and packs of members
    over 64 KiB are copied by the kernel (which clones them): the blobs share the source's
    blocks, are named by their bytes' hash, and a later write to the source changes nothing
    stored."""
    src = reflink_dir / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(rand(3 * MIB + 5000, 1))
    for i in range(3):
        (src / ("p%d.bin" % i)).write_bytes(rand(128 * KIB, 10 + i))  # one pack, aligned
    store = CheckpointStore(
        LocalStorage(str(reflink_dir / "store")), options(chunk_size=MIB, small_size=256 * KIB)
    )
    m = store.save(str(src), make_scope())
    by_path = {f.path: f for f in m.files}
    for c in by_path["big.bin"].chunks:
        assert shared_bytes(str(_blob(reflink_dir, c.blob))) >= c.length - 4096
    pack = by_path["p0.bin"].chunks[0].blob
    assert shared_bytes(str(_blob(reflink_dir, pack))) >= 128 * KIB
    stored = {c.blob: _blob(reflink_dir, c.blob).read_bytes() for f in m.files for c in f.chunks}
    assert all(digest(data) == name for name, data in stored.items())
    with open(src / "big.bin", "r+b") as f:
        f.write(b"the user's own change")
    assert all(_blob(reflink_dir, n).read_bytes() == data for n, data in stored.items())
    store.load(store.read(m.key), str(reflink_dir / "out"))
    assert (reflink_dir / "out" / "big.bin").read_bytes() == rand(3 * MIB + 5000, 1)


# ------------------------------------------------------------------------------------ loads
def _pattern(n: int, zero_every: int, seed: int) -> bytes:
    """``n`` bytes: random, with every ``zero_every``-th 64 KiB block all zeros (0: none)."""
    data = bytearray(rand(n, seed))
    if zero_every:
        for k, off in enumerate(range(0, n, 64 * KIB)):
            if k % zero_every == 0:
                data[off : off + 64 * KIB] = bytes(min(64 * KIB, n - off))
    return bytes(data)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.lists(
        st.tuples(
            st.sampled_from([1, 4096, 70_000, PIECE - 1, PIECE + 1, 3 * PIECE + 4097])
            | st.integers(1, 4 * PIECE),
            st.sampled_from([0, 1, 2, 3]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_local_load_hashes_what_it_writes_on_its_fast_path(tmp_path_factory, files):
    """Chunks and pack members of any size, with zero blocks (left as holes) anywhere, are
    written from the store's mapping, a chunk hashed piece by piece as it is written: each
    verifies there, so no blob is fetched again by the generic path, and the files load back
    exactly."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import download

    base = tmp_path_factory.mktemp("load")
    src = base / "src"
    src.mkdir()
    for k, (n, zero_every) in enumerate(files):
        (src / ("f%d" % k)).write_bytes(_pattern(n, zero_every, k))
    store = CheckpointStore(
        LocalStorage(str(base / "store")), options(chunk_size=2 * MIB, small_size=128 * KIB)
    )
    m = store.save(str(src), make_scope())
    real, generic = download._fetch_verified, []

    def counted(*args, **kwargs):
        generic.append(args[2])
        return real(*args, **kwargs)

    download._fetch_verified = counted
    try:
        store.load(store.read(m.key), str(base / "out"))
    finally:
        download._fetch_verified = real
    assert generic == []
    assert snapshot(base / "out") == snapshot(src)


@pytest.mark.parametrize("where", ["data", "hole"])
@pytest.mark.parametrize("kind", ["chunk", "member"])
def test_a_stored_byte_flipped_anywhere_fails_the_fast_path_load(tmp_path, kind, where):
    """A byte flipped in the store, in data or in a zero block the load leaves as a hole, of a
    large file's chunk or of a pack member: the load is an integrity error naming the file,
    and the file is not left in the target."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointIntegrityError,
    )

    src = tmp_path / "src"
    src.mkdir()
    size = 3 * PIECE + 5 if kind == "chunk" else 100 * KIB
    (src / "f.bin").write_bytes(_pattern(size, 2, 1))  # blocks 0, 2, 4, ... are zeros
    (src / "g.bin").write_bytes(rand(50 * KIB, 2))
    store = CheckpointStore(
        LocalStorage(str(tmp_path / "store")), options(chunk_size=4 * MIB, small_size=128 * KIB)
    )
    m = store.save(str(src), make_scope())
    (entry,) = [f for f in m.files if f.path == "f.bin"]
    c = entry.chunks[0]
    at = c.offset + (64 * KIB + 10 if where == "data" else 10)
    blob = tmp_path / "store" / "blobs" / c.blob[:2] / c.blob
    data = bytearray(blob.read_bytes())
    data[at] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="f.bin"):
        store.load(store.read(m.key), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "f.bin").exists()
