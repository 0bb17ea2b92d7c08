"""Choosing a backend from a URL, and the checkpoint root of a Metaflow datastore."""

from __future__ import annotations

import os

import metaflow  # noqa: F401  (imported before the extension, as Metaflow itself does)
import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import (
    root_for_datastore,
    storage_for_url,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.fsspec_store import (
    FsspecStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import S3Storage


def test_plain_path_is_local_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    retry = RetryPolicy(attempts=2)
    store = storage_for_url("ckpts/root", retry=retry, fsync=True)
    assert isinstance(store, LocalStorage)
    assert store.root == str(tmp_path / "ckpts" / "root")
    assert store.fsync is True and store.retry is retry


def test_file_url_is_local(tmp_path):
    store = storage_for_url("file://%s/x" % tmp_path)
    assert isinstance(store, LocalStorage)
    assert store.root == str(tmp_path / "x")
    store.put_bytes("k", b"v")
    assert (tmp_path / "x" / "k").read_bytes() == b"v"


def test_s3_url_is_s3_and_lazy():
    store = storage_for_url("s3://bucket/prefix/", workers=12, timeout=3)
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.url) == ("bucket", "prefix", "s3://bucket/prefix")
    assert store.workers == 12 and store.timeout == 3
    assert store._client is None  # no client (and no network) until first use


def test_memory_url_is_fsspec():
    store = storage_for_url("memory://factory-test")
    assert isinstance(store, FsspecStorage)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    store.delete("k")


@pytest.mark.parametrize("url", ["nosuchproto://x/y", "", "   "])
def test_unsupported_or_empty_url(url):
    with pytest.raises(CheckpointConfigError) as info:
        storage_for_url(url)
    if url.strip():
        assert url in str(info.value)


@pytest.mark.parametrize(
    "ds_type, ds_root, expected",
    [
        ("s3", "s3://bkt/metaflow", "s3://bkt/metaflow/mf.checkpointing"),
        ("s3", "s3://bkt/metaflow/", "s3://bkt/metaflow/mf.checkpointing"),
        ("gs", "gs://bkt/mf", "gs://bkt/mf/mf.checkpointing"),
        ("azure", "container/prefix", "az://container/prefix/mf.checkpointing"),
        ("s3-compatible", "s3://bkt/x", "s3://bkt/x/mf.checkpointing"),  # extension types
    ],
)
def test_root_for_datastore_urls(ds_type, ds_root, expected):
    assert root_for_datastore(ds_type, ds_root) == expected


def test_root_for_local_datastore(tmp_path):
    root = root_for_datastore("local", str(tmp_path / ".metaflow"))
    assert root == os.path.join(str(tmp_path / ".metaflow"), "mf.checkpointing")
    assert isinstance(storage_for_url(root), LocalStorage)


@pytest.mark.parametrize("ds_type, ds_root", [("local", ""), ("s3", None), ("weird", "a/b")])
def test_root_for_datastore_errors(ds_type, ds_root):
    with pytest.raises(CheckpointConfigError, match=ds_type):
        root_for_datastore(ds_type, ds_root)


# Azure: the blob endpoint's account and Metaflow's setting reaching a real Azurite are in
# tests/storage/test_azure_gcs.py.


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://127.0.0.1:1/ckpt", "Connection refused"),  # ftp connects when created
        ("ftp://127.0.0.1:1/", "Connection refused"),
    ],
)
def test_a_backend_failing_to_open_names_the_root_and_keeps_the_reason(url, reason):
    """The backend's own error ("[Errno 111] Connection refused") did not say which root."""
    with pytest.raises(StorageError) as info:
        storage_for_url(url)
    error = info.value
    assert error.message.startswith("Cannot open the checkpoint root %s: " % url)
    assert reason in error.message and reason in error.reason
    assert error.url == url
    assert isinstance(error.__cause__, OSError)
