"""One conformance suite for every storage backend: the behaviour the checkpoint core relies on.

Each test runs against memory, local, S3 (a real local moto server), Azure Blob (Azurite),
Google Cloud Storage (gcp-storage-emulator), fsspec's memory filesystem and fsspec's local
filesystem.  A backend passes only if it behaves like the others.  Azure and GCS stores are made
by the factory from the settings a user gives (blob endpoint and account key, emulator host).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import metaflow  # noqa: F401  (imported before the extension, as Metaflow itself does)
import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import gcs_options
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    StorageError,
    StorageNotFound,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import storage_for_url
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.fsspec_store import (
    FsspecStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

MiB = 1 << 20
# Errors in a test should fail fast, not wait out production retry bounds.
FAST = RetryPolicy(attempts=3, max_seconds=10, backoff=0.01, max_backoff=0.05)

BACKENDS = [
    "memory",
    "local",
    pytest.param("s3", marks=pytest.mark.s3),
    "azure",
    "gs",
    "fsspec-memory",
    "fsspec-local",
]


@pytest.fixture(params=BACKENDS)
def make_store(request, tmp_path):
    """``make_store(suffix="")``: a fresh store of the backend; a suffix gives a sibling root
    (``<root><suffix>``) next to it, to check that roots do not leak into each other."""
    kind = request.param
    cleanup = []
    if kind == "memory":
        stores: dict = {}

        def make(suffix: str = ""):
            return stores.setdefault(suffix, MemoryStorage("memory://conf" + suffix, retry=FAST))

    elif kind == "local":

        def make(suffix: str = ""):
            return LocalStorage(str(tmp_path / ("store" + suffix)), retry=FAST)

    elif kind == "s3":
        from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
            s3_config,
        )
        from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import S3Storage

        bucket = request.getfixturevalue("s3_env")["new_bucket"]()

        def make(suffix: str = ""):
            url = "s3://%s/ckpt/root%s" % (bucket, suffix)
            return S3Storage(url, retry=FAST, timeout=30, config=s3_config())

    elif kind == "azure":
        env = request.getfixturevalue("azure_env")
        container = env["new_container"]()

        def make(suffix: str = ""):
            url = "az://%s/ckpt/root%s" % (container, suffix)
            return storage_for_url(url, retry=FAST, timeout=30, azure_endpoint=env["endpoint"])

    elif kind == "gs":
        bucket = request.getfixturevalue("gcs_env")["new_bucket"]()

        def make(suffix: str = ""):
            url = "gs://%s/ckpt/root%s" % (bucket, suffix)
            return storage_for_url(url, retry=FAST, timeout=30, fsspec_options=gcs_options())

    elif kind == "fsspec-memory":
        # fsspec's memory filesystem is global to the process: unique root, removed after.
        root = "memory://conf-%s" % uuid.uuid4().hex

        def make(suffix: str = ""):
            store = FsspecStorage(root + suffix, retry=FAST)
            cleanup.append(store)
            return store

    else:

        def make(suffix: str = ""):
            return FsspecStorage("file://%s" % (tmp_path / ("fs" + suffix)), retry=FAST)

    make.kind = kind
    yield make
    for store in cleanup:
        try:
            store.fs.rm(store.root, recursive=True)
        except FileNotFoundError:
            pass


@pytest.fixture
def store(make_store):
    return make_store()


def keys_of(store, prefix: str = "") -> set:
    return {info.key for info in store.list(prefix)}


# ---------------------------------------------------------------------------------- put / get
def test_roundtrip_bytes_bytearray_memoryview(store):
    store.put_bytes("a/bytes", b"hello")
    store.put_bytes("a/bytearray", bytearray(b"world"))
    buf = bytearray(b"0123456789")
    store.put_bytes("a/view", memoryview(buf)[2:6])
    buf[:] = b"x" * 10  # the caller reuses its buffer right after put returns
    assert store.get_bytes("a/bytes") == b"hello"
    assert store.get_bytes("a/bytearray") == b"world"
    assert store.get_bytes("a/view") == b"2345"


def test_large_object_from_reused_buffer(store):
    size = 17 * MiB
    buf = bytearray(os.urandom(size + 4096))  # a transfer buffer larger than the object
    expected = bytes(buf[:size])
    store.put_bytes("blobs/ab/large", memoryview(buf)[:size])
    buf[:16] = b"\0" * 16
    assert store.get_bytes("blobs/ab/large") == expected
    assert [(i.key, i.size) for i in store.list("blobs/")] == [("blobs/ab/large", size)]


def test_empty_object(store):
    store.put_bytes("empty", b"")
    assert store.exists("empty")
    assert store.get_bytes("empty") == b""
    assert store.get_bytes("empty", 0, 10) == b""
    assert [(i.key, i.size) for i in store.list()] == [("empty", 0)]


def test_get_missing_raises_not_found(store, tmp_path):
    with pytest.raises(StorageNotFound, match="missing/key"):
        store.get_bytes("missing/key")
    with pytest.raises(StorageNotFound):
        store.get_bytes("missing/key", 10, 5)
    with pytest.raises(StorageNotFound):
        store.get_bytes("missing/key", 0, 0)
    target = tmp_path / "target"
    with pytest.raises(StorageNotFound):
        store.get_file("missing/key", str(target))
    assert not target.exists()


def test_get_of_a_prefix_is_not_found(store):
    """A key that only exists as a prefix of other keys reads as missing, on every backend."""
    store.put_bytes("dir/child", b"x")
    assert not store.exists("dir")
    with pytest.raises(StorageNotFound):
        store.get_bytes("dir")


@pytest.mark.parametrize(
    "start, length, expected",
    [
        (0, None, slice(0, None)),
        (10, None, slice(10, None)),
        (0, 7, slice(0, 7)),
        (100, 28, slice(100, 128)),
        (1000, 100, slice(1000, 1024)),  # length past the end: what is there
        (1024, None, slice(0, 0)),  # start at the end: nothing
        (2000, 5, slice(0, 0)),  # start past the end: nothing
        (5, 0, slice(0, 0)),
    ],
)
def test_ranged_get(store, start, length, expected):
    data = bytes(range(256)) * 4
    store.put_bytes("r", data)
    assert store.get_bytes("r", start, length) == data[expected]


def test_exists(store):
    assert not store.exists("e/x")
    store.put_bytes("e/x", b"1")
    assert store.exists("e/x")
    assert not store.exists("e/xy")
    assert not store.exists("e/x/y")


def test_put_new_stores_an_object_as_put_bytes_does(store):
    """``put_new`` (the metrics log's put, ADR 009) of a key no object has: it reads back,
    lists and deletes like any object, from any buffer type."""
    for i, data in enumerate((b"entry", bytearray(os.urandom(70000)), memoryview(b"abc"))):
        store.put_new("m/e%d" % i, data)
        assert store.get_bytes("m/e%d" % i) == bytes(data)
    assert {(i.key, i.size) for i in store.list("m/")} == {
        ("m/e0", 5),
        ("m/e1", 70000),
        ("m/e2", 3),
    }
    store.delete("m/e1")
    assert keys_of(store, "m/") == {"m/e0", "m/e2"}


def test_overwrite_replaces(store):
    store.put_bytes("k", b"a much longer first version")
    store.put_bytes("k", b"short")
    assert store.get_bytes("k") == b"short"
    assert [(i.key, i.size) for i in store.list("k")] == [("k", 5)]


# ---------------------------------------------------------------------------------- list
def test_list_is_recursive_and_matches_raw_prefixes(store):
    objects = {
        "a/b/c": b"1",
        "a/b/d/e": b"22",
        "a/bb": b"333",
        "a/c": b"4444",
        "b": b"55555",
        "ab": b"6",
    }
    for key, data in objects.items():
        store.put_bytes(key, data)

    assert keys_of(store) == set(objects)
    assert keys_of(store, "a/b") == {"a/b/c", "a/b/d/e", "a/bb"}
    assert keys_of(store, "a/b/") == {"a/b/c", "a/b/d/e"}
    assert keys_of(store, "a") == {"a/b/c", "a/b/d/e", "a/bb", "a/c", "ab"}
    assert keys_of(store, "a/") == {"a/b/c", "a/b/d/e", "a/bb", "a/c"}
    assert keys_of(store, "a/b/d/e") == {"a/b/d/e"}
    assert keys_of(store, "a/b/c/") == set()
    assert keys_of(store, "zzz") == set()
    assert keys_of(store, "zzz/") == set()

    now = time.time()
    for info in store.list():
        assert info.size == len(objects[info.key])
        assert info.mtime is not None and abs(info.mtime - now) < 600


def test_list_of_empty_store(store):
    assert store.list() == []
    assert store.list("x/") == []


def test_has_objects_says_whether_a_prefix_holds_any_object(make_store):
    """``has_objects`` (how the CLI tells a datastore root from a checkpoint root): raw
    prefixes as ``list`` matches them, inside the root only, False for a missing prefix."""
    store, sibling = make_store(), make_store("2")
    sibling.put_bytes("s/x", b"sibling")
    assert not store.has_objects() and not store.has_objects("a/")
    store.put_bytes("a/b/c", b"1")
    assert store.has_objects() and store.has_objects("a/") and store.has_objects("a/b")
    assert not store.has_objects("a/c") and not store.has_objects("s/")


def test_list_stays_inside_the_root(make_store):
    store, sibling = make_store(), make_store("2")
    sibling.put_bytes("x", b"sibling")
    store.put_bytes("y", b"mine")
    assert keys_of(store) == {"y"}
    assert not store.exists("x")
    assert keys_of(sibling) == {"x"}


def test_list_never_shows_writes_in_flight(store):
    """Listings taken while large objects are written show only complete objects."""
    sizes = {"w/obj-%d" % i: 2 * MiB + i for i in range(8)}
    seen: set = set()
    errors: list = []

    def writer():
        try:
            for _ in range(2):
                for key, size in sizes.items():
                    store.put_bytes(key, memoryview(bytearray(size)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        for info in store.list("w/"):
            assert info.key in sizes, "listed a temp object %r" % info.key
            assert info.size == sizes[info.key], "listed a partial object %r" % info.key
            seen.add(info.key)
    thread.join()
    assert not errors
    assert keys_of(store, "w/") == set(sizes)


# ---------------------------------------------------------------------------------- delete
def test_delete(store):
    store.put_bytes("d/k", b"x")
    store.put_bytes("d/keep", b"y")
    store.delete("d/k")
    with pytest.raises(StorageNotFound):
        store.get_bytes("d/k")
    assert not store.exists("d/k")
    assert keys_of(store) == {"d/keep"}


def test_delete_missing_is_ok(store):
    store.delete("never/written")
    store.put_bytes("once", b"x")
    store.delete("once")
    store.delete("once")
    assert store.list() == []


# ---------------------------------------------------------------------------------- files
def test_put_file_get_file_roundtrip(store, tmp_path):
    data = os.urandom(20 * MiB)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store.put_file("files/big.bin", str(src))
    assert [(i.key, i.size) for i in store.list("files/")] == [("files/big.bin", len(data))]
    assert store.get_bytes("files/big.bin", 12 * MiB, 100) == data[12 * MiB : 12 * MiB + 100]

    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"stale content is replaced")
    store.get_file("files/big.bin", str(dst))
    assert dst.read_bytes() == data


def test_put_file_of_missing_source_is_not_a_missing_key(store, tmp_path):
    with pytest.raises(StorageError) as info:
        store.put_file("k", str(tmp_path / "no-such-file"))
    assert not isinstance(info.value, StorageNotFound)
    assert "no-such-file" in str(info.value)


# ---------------------------------------------------------------------------------- keys
BAD_KEYS = ["../x", "a/../../x", "/abs", "a//b", "a/./b", ".", "", "a\\b", "a/b/"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_rejected_before_io(store, key, tmp_path, monkeypatch):
    def no_io(*args, **kwargs):
        raise AssertionError("storage I/O for an invalid key")

    for primitive in ("_put_bytes", "_put_new", "_put_file", "_get_bytes", "_get_file", "_exists"):
        monkeypatch.setattr(store, primitive, no_io)
    monkeypatch.setattr(store, "_delete", no_io)
    src = tmp_path / "src"
    src.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_new(key, b"x"),
        lambda: store.put_file(key, str(src)),
        lambda: store.get_bytes(key),
        lambda: store.get_file(key, str(tmp_path / "dst")),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, StorageNotFound)


@pytest.mark.parametrize("prefix", ["../", "/abs", "a//b"])
def test_invalid_list_prefix_rejected(store, prefix):
    with pytest.raises(StorageError):
        store.list(prefix)


# ---------------------------------------------------------------------------------- threads
def test_concurrent_puts_from_threads(store):
    n_threads, per_thread = 8, 12
    errors: list = []

    def work(t: int):
        try:
            for i in range(per_thread):
                store.put_bytes("c/%d/%d" % (t, i), b"%d-%d" % (t, i) * (i + 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    infos = {i.key: i.size for i in store.list("c/")}
    assert len(infos) == n_threads * per_thread
    for t in range(n_threads):
        for i in range(per_thread):
            expected = b"%d-%d" % (t, i) * (i + 1)
            assert infos["c/%d/%d" % (t, i)] == len(expected)
            assert store.get_bytes("c/%d/%d" % (t, i)) == expected


# --------------------------------------------------------------------- missing bucket/container
@pytest.mark.parametrize("kind", ["s3", "azure", "gs"])
def test_a_missing_bucket_or_container_is_not_an_empty_store(kind, request, tmp_path):
    """A root in a bucket/container that does not exist (a typo) must not read as an empty
    store: every read (list, exists, get) and every write (put of bytes or of a file, the
    first thing a save does) says that it does not exist, naming it, and is no "not found" of
    a key.  (Local and memory roots have no bucket: a missing root directory is a store
    nothing was saved to.)"""
    name = "nosuch%s" % uuid.uuid4().hex[:8]
    if kind == "s3":
        from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
            s3_config,
        )
        from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import S3Storage

        request.getfixturevalue("s3_env")
        store = S3Storage("s3://%s/ckpt/root" % name, retry=FAST, timeout=30, config=s3_config())
        label = "S3 bucket %r does not exist" % name
    elif kind == "azure":
        env = request.getfixturevalue("azure_env")
        store = storage_for_url(
            "az://%s/ckpt/root" % name, retry=FAST, timeout=30, azure_endpoint=env["endpoint"]
        )
        label = "Azure container %r does not exist" % name
    else:
        request.getfixturevalue("gcs_env")
        store = storage_for_url(
            "gs://%s/ckpt/root" % name, retry=FAST, timeout=30, fsspec_options=gcs_options()
        )
        label = "GCS bucket %r does not exist" % name
    reads = {
        "list": lambda: list(store.list("manifests/")),
        "exists": lambda: store.exists("manifests/x"),
        "get": lambda: store.get_bytes("manifests/x"),
        "put": lambda: store.put_bytes("leases/x/start", b"{}"),
        "put_file": lambda: store.put_file("blobs/ab/x", str(local)),
    }
    local = tmp_path / "file"
    local.write_bytes(b"payload")
    for op, read in reads.items():
        with pytest.raises(StorageError) as info:
            read()
        assert not isinstance(info.value, StorageNotFound), op
        assert label in str(info.value), (op, str(info.value))
