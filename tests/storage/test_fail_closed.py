"""Listings fail closed: a part of the store that cannot be read is an error, never an omission.

Load policies, retention and garbage collection all act on what a listing returns: a directory
silently skipped looks like one without checkpoints, so a retry starts from scratch and GC
deletes the data of the checkpoints it did not see.  Permission tests run through
:func:`tests.unprivileged.run_unprivileged`, so they mean the same as root (CI) and as a user.
"""

from __future__ import annotations

import os

import metaflow  # noqa: F401  (imported before the extension, as Metaflow itself does)
import pytest
from core.helpers import make_scope
from unprivileged import run_unprivileged, world_tmpdir

from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import resolve
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.fsspec_store import (
    FsspecStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

FAST = RetryPolicy(attempts=2, max_seconds=5, backoff=0.01, max_backoff=0.02)
BACKENDS = ["local", "fsspec-local"]


def _storage(kind: str, root: str):
    if kind == "local":
        return LocalStorage(root, retry=FAST)
    return FsspecStorage("file://" + root, retry=FAST)


def _outcome(fn, *args):
    """``("ok", value)`` or ``("error", type name, message)``: exceptions of the package do not
    all survive the trip back from the unprivileged child, their messages do."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the test asserts on the type name
        return ("error", type(exc).__name__, str(exc))


def _list_keys(kind: str, root: str, prefix: str):
    return _outcome(lambda: sorted(o.key for o in _storage(kind, root).list(prefix)))


@pytest.fixture
def world():
    with world_tmpdir() as path:
        yield path


def _populate(kind: str, root: str) -> None:
    store = _storage(kind, root)
    for key in ("m/a/1.json", "m/b/2.json", "m/b/deep/3.json", "m/c/4.json"):
        store.put_bytes(key, b"{}")


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("mode", [0o000, 0o444, 0o111], ids=["none", "read-only", "search-only"])
def test_unreadable_subdirectory_is_an_error(world, kind, mode):
    """A subdirectory the listing cannot read or enter fails the listing, naming the path, for
    a prefix above it and for the prefix itself; siblings are unaffected."""
    root = os.path.join(world, "store")
    _populate(kind, root)
    blocked = os.path.join(root, "m", "b")
    os.chmod(blocked, mode)
    for prefix in ("m/", "m/b", "m/b/", ""):
        outcome = run_unprivileged(_list_keys, kind, root, prefix)
        assert outcome[0] == "error", (prefix, outcome)
        assert outcome[1] == "StorageError"
        assert "Permission denied" in outcome[2]
        assert os.path.join("m", "b") in outcome[2]  # names what could not be read
        assert "never skips what it cannot read" in outcome[2]  # and what to do
    assert run_unprivileged(_list_keys, kind, root, "m/a/") == ("ok", ["m/a/1.json"])
    assert run_unprivileged(_list_keys, kind, root, "m/c") == ("ok", ["m/c/4.json"])


@pytest.mark.parametrize("kind", BACKENDS)
def test_missing_prefix_is_empty_not_an_error(world, kind):
    """Failing closed does not make an absent prefix an error: nothing saved yet is empty."""
    root = os.path.join(world, "store")
    _populate(kind, root)
    assert run_unprivileged(_list_keys, kind, root, "m/nothing/here/") == ("ok", [])
    assert run_unprivileged(_list_keys, kind, os.path.join(world, "absent"), "m/") == ("ok", [])
    assert run_unprivileged(_list_keys, kind, root, "m/a/1.json/") == ("ok", [])


# ------------------------------------------------------------------------ what acts on listings
def _resolve_retry(kind: str, root: str):
    scope = make_scope(attempt=1)
    return _outcome(lambda: resolve(_storage(kind, root), "fresh", scope).reason)


def _headers(kind: str, root: str, prefix: str):
    store = CheckpointStore(_storage(kind, root))
    return _outcome(lambda: [h.key for h in store.headers(prefix)])


def _gc(kind: str, root: str):
    store = CheckpointStore(_storage(kind, root))
    return _outcome(lambda: store.gc(grace_seconds=0).blobs_deleted)


@pytest.mark.parametrize("kind", BACKENDS)
def test_unreadable_task_directory_stops_retry_retention_and_gc(world, kind, tmp_path):
    """A retry whose task's manifests directory cannot be read fails with the clear error
    instead of starting fresh; listing (what retention prunes from) and GC fail the same way,
    and GC deletes nothing."""
    root = os.path.join(world, "store")
    store = CheckpointStore(_storage(kind, root))
    src = tmp_path / "state.txt"
    src.write_text("epoch 3")
    saved = store.save(str(src), make_scope(attempt=0))
    other = tmp_path / "other.txt"
    other.write_text("another task")
    store.save(str(other), make_scope(task="8"))
    blobs = {o.key for o in store.storage.list("blobs/")}
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o777)  # GC running as nobody could delete what it thinks unused

    task_dir = os.path.join(root, *make_scope().task_prefix().rstrip("/").split("/"))
    assert os.path.isfile(os.path.join(task_dir, saved.key.rsplit("/", 1)[1]))
    # Readable, the retry finds the checkpoint of attempt 0.
    assert run_unprivileged(_resolve_retry, kind, root)[1].startswith("latest checkpoint")
    os.chmod(task_dir, 0o000)

    retry = run_unprivileged(_resolve_retry, kind, root)
    assert retry[0] == "error" and retry[1] == "StorageError", retry
    assert "Permission denied" in retry[2] and task_dir in retry[2]

    listing = run_unprivileged(_headers, kind, root, make_scope().step_prefix())
    assert listing[0] == "error" and listing[1] == "StorageError", listing

    collected = run_unprivileged(_gc, kind, root)
    assert collected[0] == "error" and collected[1] == "StorageError", collected
    os.chmod(task_dir, 0o755)
    assert {o.key for o in store.storage.list("blobs/")} == blobs


def test_storage_error_names_path_and_remedy(world):
    """The error is a StorageError (what callers and the CLI report), not a raw OSError."""
    root = os.path.join(world, "store")
    _populate("local", root)
    os.chmod(os.path.join(root, "m"), 0o000)

    def listing():
        try:
            LocalStorage(root, retry=FAST).list("m/")
        except StorageError as exc:
            return exc.message
        return None

    message = run_unprivileged(listing)
    assert message is not None and message.startswith("list of %s" % os.path.join(root, "m"))


# ------------------------------------------------------------------------------------------ S3
def _s3_store(bucket: str):
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import s3_config
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import S3Storage

    store = S3Storage("s3://%s/root" % bucket, retry=FAST, timeout=30, config=s3_config())
    for i in range(5):
        store.put_bytes("manifests/t/%d.json" % i, b"{}")
    # Pages of two keys, so a listing of five takes three pages.
    store.client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2",
        lambda params, **kwargs: params.update(MaxKeys=2),
    )
    return store


@pytest.mark.s3
def test_s3_truncated_page_without_token_is_an_error(s3_env):
    """A page marked truncated without a continuation token (a misbehaving S3-compatible server
    or proxy) fails the listing; botocore's paginator would just stop there."""
    store = _s3_store(s3_env["new_bucket"]())
    assert len(store.list("manifests/")) == 5

    def drop_token(parsed, **kwargs):
        parsed.pop("NextContinuationToken", None)

    store.client.meta.events.register("after-call.s3.ListObjectsV2", drop_token)
    with pytest.raises(StorageError, match="ended early.*truncated.*never skips"):
        store.list("manifests/")


@pytest.mark.s3
def test_s3_failing_page_is_an_error(s3_env):
    """A later page that fails (here: access denied) fails the whole listing instead of
    returning the keys of the pages before it."""
    from botocore.exceptions import ClientError

    store = _s3_store(s3_env["new_bucket"]())
    calls = []

    def deny_second_page(params, **kwargs):
        calls.append(params)
        if len(calls) == 2:
            raise ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2"
            )

    store.client.meta.events.register("before-call.s3.ListObjectsV2", deny_second_page)
    with pytest.raises(StorageError, match="AccessDenied.*never skips"):
        store.list("manifests/")
