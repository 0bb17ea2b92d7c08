"""Loads into a new directory (``core/loading.py``'s staging directory, ``fresh``): files are
written at their final names, with their modes, and the staging directory is renamed once.

What a user relies on: the same bytes and modes as a load into an existing directory, whatever
the umask; the target appears only once complete; nothing is written through a symbolic link
planted where a file goes; pack members spread over many directories load right with any
number of workers."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import download, loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import CHUNK, make_scope, options, write_tree

MODES = {"r.txt": 0o644, "secret.key": 0o600, "run.sh": 0o755, "group.cfg": 0o640}
MODES.update({"ro.bin": 0o444, "setuid": 0o4755, "sub/deep/x": 0o751, "sub/w": 0o666})


def modes_of(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o027, 0o002], ids=oct)
def test_a_load_into_a_new_directory_restores_every_mode_whatever_the_umask(tmp_path, umask):
    tree = {rel: (rel.encode() * 50, mode) for rel, mode in MODES.items()}
    src = write_tree(tmp_path / "src", tree)
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    previous = os.umask(umask)
    try:
        loading.load(store, m, str(tmp_path / "new"))  # fresh: final names, created with modes
        (tmp_path / "old").mkdir()
        loading.load(store, m, str(tmp_path / "old"), existing=loading.MERGE)  # temp + rename
    finally:
        os.umask(previous)
    expected = {rel: mode & 0o777 for rel, mode in MODES.items()}  # never setuid
    assert modes_of(tmp_path / "new") == expected
    assert modes_of(tmp_path / "old") == expected
    assert contents(tmp_path / "new") == contents(src)


def test_the_new_directory_appears_only_once_complete_without_a_rename_per_file(
    tmp_path, monkeypatch
):
    src = write_tree(
        tmp_path / "src", {"d%d/f%03d" % (i % 5, i): os.urandom(300) for i in range(200)}
    )
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    target = tmp_path / "out" / "model"
    seen, renames = [], []
    real_replace, real_rename = os.replace, os.rename

    def progress(n: int) -> None:
        seen.append(target.exists())

    def counting(real):
        def call(a, b, *args, **kwargs):
            renames.append(os.path.basename(b))
            return real(a, b, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "replace", counting(real_replace))
    monkeypatch.setattr(os, "rename", counting(real_rename))
    loading.load(store, m, str(target), progress=progress)
    assert seen and not any(seen)  # never visible while its files were written
    assert renames == ["model"]  # the staging directory, once: no temp name per file
    assert contents(target) == contents(src)
    assert sorted(os.listdir(tmp_path / "out")) == ["model"]  # no staging left beside it


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "existing"])
def test_a_symlink_where_a_file_goes_is_never_written_through(tmp_path, monkeypatch, fresh):
    src = write_tree(tmp_path / "src", {"model.bin": b"weights" * 1000, "cfg.json": b"{}"})
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    if fresh:  # planted by another process once the load has begun
        real_plan = download.plan

        def plant_then_plan(*args, **kwargs):
            (dest / "model.bin").symlink_to(outside)
            return real_plan(*args, **kwargs)

        monkeypatch.setattr(download, "plan", plant_then_plan)
    else:
        (dest / "model.bin").symlink_to(outside)
    with pytest.raises(Exception) as info:
        store.load(m, str(dest), fresh=fresh)
    if fresh:  # created with O_NOFOLLOW: the open fails, the load says where
        assert isinstance(info.value, StorageError)
        assert "model.bin" in str(info.value)
    else:  # a load into an existing directory refuses a link out of it before writing
        assert "outside" in str(info.value) or "symlink" in str(info.value)
    assert outside.read_bytes() == b"precious"


def test_a_file_another_process_puts_where_a_fresh_load_writes_fails_the_load(
    tmp_path, monkeypatch
):
    """Each file of a fresh load is created exclusively: bytes someone else wrote under its
    name (or a second checkpoint path naming the same file on a case-folding filesystem)
    never mix with the loaded ones; the load fails, naming the file."""
    src = write_tree(tmp_path / "src", {"a.bin": os.urandom(20_000), "b.txt": b"b" * 300})
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    target = tmp_path / "out" / "model"
    real_plan = download.plan

    def plant_then_plan(job, dirs):
        (Path(job.dest) / "a.bin").write_bytes(b"X" * 160_000)  # longer than the saved file
        return real_plan(job, dirs)

    monkeypatch.setattr(download, "plan", plant_then_plan)
    with pytest.raises(StorageError) as info:
        loading.load(store, m, str(target))
    assert "a.bin" in str(info.value) and "exists already" in str(info.value)
    assert not target.exists()  # nothing half-loaded appears
    monkeypatch.undo()
    loading.load(store, m, str(target))  # the next load beside it is complete
    assert contents(target) == contents(src)


def _load_as_nobody(root: str) -> dict:
    os.umask(0o022)
    store = CheckpointStore(LocalStorage(root + "/store"), options())
    m = store.read(Path(root, "key").read_text())
    loading.load(store, m, root + "/new")
    os.mkdir(root + "/old")
    loading.load(store, m, root + "/old", existing=loading.MERGE)
    return {d: (modes_of(Path(root, d)), contents(Path(root, d))) for d in ("new", "old")}


def test_read_only_files_load_for_a_user_without_roots_bypass():
    """Files saved without the owner's write bit (0o444, 0o555, 0o400): a large one written by
    several workers, one of a single chunk, small packed ones; loaded by ``nobody`` (root
    ignores file modes, which would hide a reopen of a read-only file)."""
    from unprivileged import run_unprivileged, world_tmpdir

    tree = {
        "ro-small.txt": (b"r" * 300, 0o444),
        "exec-ro.sh": (b"#!" * 100, 0o555),
        "owner-only.key": (os.urandom(2000), 0o400),
        "big-ro.bin": (os.urandom(3 * CHUNK + 100), 0o444),  # several chunks
        "one-chunk.bin": (os.urandom(CHUNK), 0o440),
        "rw.txt": (b"w" * 10, 0o644),
    }
    with world_tmpdir() as root:
        src = write_tree(Path(root, "src"), tree)
        store = CheckpointStore(LocalStorage(root + "/store"), options())
        Path(root, "key").write_text(store.save(str(src), make_scope()).key)
        for dirpath, dirs, files in os.walk(root + "/store"):  # readable and writable by nobody
            for name in dirs:
                os.chmod(os.path.join(dirpath, name), 0o777)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o666)
        os.chmod(root + "/key", 0o644)
        got = run_unprivileged(_load_as_nobody, root)
    for d in ("new", "old"):
        assert got[d][0] == {rel: mode for rel, (_data, mode) in tree.items()}
        assert got[d][1] == {rel: data for rel, (data, _mode) in tree.items()}


def _posix_acl(entries: list[tuple[int, int]]) -> bytes:
    """A system.posix_acl_default value: version 2, then (tag, permissions, id) entries."""
    body = b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    return struct.pack("<I", 2) + body


def test_modes_are_restored_under_a_default_acl_that_overrides_the_umask(tmp_path):
    """A directory with a default ACL (setfacl -d -m u::rwx,g::rwx,o::---) gives new files the
    ACL's bits, not the umask's: the loaded modes are still the saved ones."""
    tree = {"public.txt": (b"p" * 100, 0o644), "run.sh": (b"#!" * 50, 0o755)}
    src = write_tree(tmp_path / "src", tree)
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    parent = tmp_path / "acl"
    parent.mkdir()
    # USER_OBJ rwx, GROUP_OBJ rwx, OTHER ---: fails where the filesystem has no ACLs.
    os.setxattr(parent, "system.posix_acl_default", _posix_acl([(1, 7), (4, 7), (32, 0)]))
    previous = os.umask(0o022)
    try:
        loading.load(store, m, str(parent / "new"))
        (parent / "old").mkdir()
        loading.load(store, m, str(parent / "old"), existing=loading.MERGE)
    finally:
        os.umask(previous)
    expected = {rel: mode for rel, (_data, mode) in tree.items()}
    assert modes_of(parent / "new") == expected == modes_of(parent / "old")


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.dictionaries(
        st.tuples(st.integers(0, 6), st.integers(0, 400)).map(lambda t: "d%d/f%d" % t),
        st.binary(min_size=0, max_size=3000),
        min_size=1,
        max_size=120,
    ),
    workers=st.sampled_from([1, 2, 8]),
    chunk=st.sampled_from([4096, 16 << 10, 1 << 20]),
)
def test_pack_members_over_many_directories_load_with_any_worker_count(
    tmp_path_factory, files, workers, chunk
):
    tmp = tmp_path_factory.mktemp("packs")
    src = write_tree(tmp / "src", files)
    opts = options(workers=workers, chunk_size=chunk, small_size=chunk)  # packs of <= chunk
    store = CheckpointStore(LocalStorage(str(tmp / "store")), opts)
    m = store.save(str(src), make_scope())
    fresh = CheckpointStore(LocalStorage(str(tmp / "store")), opts)
    loading.load(fresh, m, str(tmp / "new"))
    (tmp / "old").mkdir()
    loading.load(fresh, m, str(tmp / "old"), existing=loading.MERGE)
    assert contents(tmp / "new") == contents(src) == contents(tmp / "old")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_in_any_packed_file_fails_the_load_naming_it(tmp_path, where):
    """Packs of small files are checked file by file (each file's own digest), not by the
    pack's hash: every byte written must still be covered."""
    tree = {"f%02d.txt" % i: os.urandom(1000 + i) for i in range(30)}
    src = write_tree(tmp_path / "src", tree)
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    packs = {c.blob for f in m.files for c in f.chunks}
    assert len(packs) == 1 and all(f.digest for f in m.files)  # one pack, per-file digests
    entry = {"first": m.files[0], "middle": m.files[15], "last": m.files[-1]}[where]
    c = entry.chunks[0]
    blob = tmp_path / "store" / "blobs" / c.blob[:2] / c.blob
    data = bytearray(blob.read_bytes())
    data[c.offset + c.length - 1] ^= 0xFF  # the last byte of that file
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError) as info:
        loading.load(
            CheckpointStore(LocalStorage(str(tmp_path / "store")), options()),
            m,
            str(tmp_path / "out"),
        )
    assert c.blob in str(info.value)
    assert not (tmp_path / "out").exists()
