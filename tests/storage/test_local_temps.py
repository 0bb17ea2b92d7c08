"""The local store's temp files: named as the rest of the package expects, created exclusively,
and published world-readable whatever the umask.

Every write to a local store goes through a temp file ``.mfckpt-tmp-<8>`` renamed into place.
Saves skip such names in a user's directory and GC removes stale ones (both through
``tempnames.is_temp_name``); another user of a shared store must be able to read what is
published.
"""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.tempnames import is_temp_name
from metaflow_extensions.checkpointing.plugins.checkpointing.storage import local
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
    LocalStorage,
    temp_file,
)

SCOPE = Scope("user:t", "F", "s", "_", "1", "1", 0)


def test_temp_files_are_named_as_temp_names_and_private_until_published(tmp_path):
    names = set()
    for _ in range(500):
        fd, path = temp_file(str(tmp_path))
        os.close(fd)
        assert os.path.dirname(path) == str(tmp_path)
        name = os.path.basename(path)
        assert is_temp_name(name), name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        names.add(name)
    assert len(names) == 500


@settings(max_examples=30, deadline=None)
@given(taken=st.integers(1, 5), kind=st.sampled_from(["file", "symlink"]))
def test_a_taken_name_is_never_opened_and_another_is_drawn(tmp_path_factory, taken, kind):
    """Names already there (a file, or a symlink planted to send the write elsewhere) are
    skipped: the new temp file is another, and what was there is left as it was."""
    root = tmp_path_factory.mktemp("temps")
    outside = root / "outside"
    outside.write_bytes(b"keep")
    draws = [bytes([i]) * 5 for i in range(taken)] + [b"\xff" * 5]
    planted = []
    for raw in draws[:-1]:
        fd, path = _with_urandom([raw], lambda: temp_file(str(root)))
        os.close(fd)
        os.unlink(path)
        if kind == "symlink":
            os.symlink(outside, path)
        else:
            with open(path, "wb") as f:
                f.write(b"x")
        planted.append(path)
    fd, path = _with_urandom(list(draws), lambda: temp_file(str(root)))
    os.write(fd, b"new")
    os.close(fd)
    assert path not in planted
    assert outside.read_bytes() == b"keep"
    for p in planted:
        assert os.path.lexists(p)
        if kind == "file":
            with open(p, "rb") as f:
                assert f.read() == b"x"


def _with_urandom(values: list, fn):
    real = os.urandom
    queue = list(values)
    local.os.urandom = lambda n: queue.pop(0) if queue else real(n)
    try:
        return fn()
    finally:
        local.os.urandom = real


def test_a_missing_directory_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        temp_file(str(tmp_path / "gone"))


def test_published_objects_are_readable_by_all_whatever_the_umask(tmp_path):
    """Blobs, manifests and small objects are 0644 even under umask 077 (a store shared by
    several users); nothing is left under a temp name."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 << 20))
    (src / "small").write_bytes(b"s" * 100)
    root = tmp_path / "store"
    old = os.umask(0o077)
    try:
        store = CheckpointStore(LocalStorage(str(root)))
        store.save(str(src), SCOPE, metadata={"step": 1})
        store.storage.put_bytes("misc/obj", b"v")
    finally:
        os.umask(old)
    files = [os.path.join(d, n) for d, _ds, ns in os.walk(root) for n in ns]
    assert files and not [f for f in files if is_temp_name(os.path.basename(f))]
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, f


def test_a_source_that_vanishes_after_put_file_s_check_makes_nothing_in_the_store(
    tmp_path, monkeypatch
):
    """The source is opened before anything is made in the store: a source that is gone by
    then (deleted right after ``put_file`` looked at it) leaves no temp file, no object and no
    directory."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage import base

    gone = str(tmp_path / "gone.bin")
    real = base.os.path.isfile
    monkeypatch.setattr(base.os.path, "isfile", lambda p: p == gone or real(p))
    root = tmp_path / "store"
    root.mkdir()
    with pytest.raises(StorageError) as info:
        LocalStorage(str(root)).put_file("models/a/weights.bin", gone)
    assert "gone.bin" in str(info.value)
    assert os.listdir(root) == []
