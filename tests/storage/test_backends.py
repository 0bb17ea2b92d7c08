"""Backend-specific checks outside the conformance suite: lazy imports, atomic local writes
caught mid-flight, and fsspec error classification."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import metaflow  # noqa: F401  (imported before the extension, as Metaflow itself does)
import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import (
    NOT_FOUND,
    PERMANENT,
    TRANSIENT,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.fsspec_store import (
    FsspecStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

PKG = "metaflow_extensions.checkpointing.plugins.checkpointing.storage"


def test_storage_modules_do_not_import_boto3():
    # `import metaflow` first: it is how these modules are reached in practice (the extension
    # loads during `import metaflow`), and it must not pull boto3 in either.  Opening an S3
    # store does import it, on purpose: a missing or broken boto3 fails as the store opens,
    # naming the extra (tests/test_optional_deps.py), not at the first save.
    code = (
        "import sys, metaflow\n"
        f"import {PKG}.s3, {PKG}.fsspec_store, {PKG}.factory\n"
        "bad = [m for m in ('boto3', 'botocore', 's3transfer') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _pause_at_commit(store, monkeypatch, seen: list):
    """List the store at the moment a write is complete but not yet renamed into place."""
    if isinstance(store, LocalStorage):
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            seen.append((os.path.exists(src), {i.key for i in store.list()}))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
    else:
        real_mv = store.fs.mv

        def mv(src, dst, *args, **kwargs):
            seen.append((store.fs.exists(src), {i.key for i in store.list()}))
            return real_mv(src, dst, *args, **kwargs)

        monkeypatch.setattr(store.fs, "mv", mv)


@pytest.mark.parametrize("kind", ["local", "fsspec-local"])
def test_local_writes_are_invisible_until_renamed(kind, tmp_path, monkeypatch):
    if kind == "local":
        store = LocalStorage(str(tmp_path / "store"))
    else:
        store = FsspecStorage("file://%s" % (tmp_path / "store"))
    store.put_bytes("old", b"1")
    seen: list = []
    _pause_at_commit(store, monkeypatch, seen)

    store.put_bytes("a/new", b"x" * 1000)
    src = tmp_path / "src"
    src.write_bytes(b"y" * 1000)
    store.put_file("a/file", str(src))
    store.put_bytes("old", b"22")  # overwrite: readers see the old object until the rename

    assert [exists for exists, _ in seen] == [True, True, True]  # a temp file was there
    assert [keys for _, keys in seen] == [{"old"}, {"old", "a/new"}, {"old", "a/new", "a/file"}]
    assert {i.key: i.size for i in store.list()} == {"old": 2, "a/new": 1000, "a/file": 1000}


def test_local_fsspec_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = FsspecStorage("file://%s" % (tmp_path / "store"))

    def broken_mv(*args, **kwargs):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(store.fs, "mv", broken_mv)
    with pytest.raises(Exception, match="disk on fire"):
        store.put_bytes("a/k", b"x")
    assert store.list() == []
    assert os.listdir(tmp_path / "store" / "a") == []


@pytest.mark.parametrize(
    "exc, kind",
    [
        (FileNotFoundError("x"), NOT_FOUND),
        (ConnectionResetError(), TRANSIENT),
        (TimeoutError(), TRANSIENT),
        (OSError(errno.ESTALE, "stale"), TRANSIENT),
        (OSError(errno.ETIMEDOUT, "timeout"), TRANSIENT),
        (OSError(errno.EACCES, "denied"), PERMANENT),
        (PermissionError(errno.EACCES, "denied"), PERMANENT),
        (ValueError("bug"), PERMANENT),
    ],
)
def test_fsspec_classify(exc, kind):
    store = FsspecStorage("memory://classify")
    assert store._classify(exc) == kind


def test_fsspec_classify_http_status():
    class HttpError(Exception):
        def __init__(self, code):
            super().__init__("http %d" % code)
            self.code = code

    store = FsspecStorage("memory://classify")
    assert store._classify(HttpError(503)) == TRANSIENT
    assert store._classify(HttpError(429)) == TRANSIENT
    assert store._classify(HttpError(403)) == PERMANENT
