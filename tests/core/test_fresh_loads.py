"""Loads into a new directory (``core/loading.py``'s staging directory, ``fresh``): files are
written at their final names, with their modes, and the staging directory is renamed once.

What a user relies on: the same bytes and modes as a load into an existing directory, whatever
the umask; the target appears only once complete; nothing is written through a symbolic link
planted where a file goes; pack members spread over many directories load right with any
number of workers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, write_tree

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
def test_a_symlink_where_a_file_goes_is_never_written_through(tmp_path, fresh):
    src = write_tree(tmp_path / "src", {"model.bin": b"weights" * 1000, "cfg.json": b"{}"})
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = store.save(str(src), make_scope())
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model.bin").symlink_to(outside)  # planted by another process
    with pytest.raises(Exception) as info:
        store.load(m, str(dest), fresh=fresh)
    if fresh:  # created with O_NOFOLLOW: the open fails, the load says where
        assert isinstance(info.value, StorageError)
        assert "model.bin" in str(info.value)
    else:  # a load into an existing directory refuses a link out of it before writing
        assert "outside" in str(info.value) or "symlink" in str(info.value)
    assert outside.read_bytes() == b"precious"


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
