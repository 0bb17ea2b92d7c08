"""The exception tree: structured fields (``key``, ``path``, ``url``, ``reason``), messages
formatted from them, pickling, and the tree drawn in ``errors.py``'s docstring.

The table test raises each error through the real code path a user hits (memory and local
stores, real files, a real unprivileged process for permissions) and checks that the fields
name the object that failed and that the message names them too.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Callable

import pytest
from metaflow.exception import MetaflowException
from unprivileged import run_unprivileged, world_tmpdir

from metaflow_extensions.checkpointing.plugins.checkpointing import errors
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointException,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    CheckpointNotFound,
    ManifestError,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.pytorch import (
    TrainingStateError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import CHUNK, make_scope, options, rand, write_tree

# A file large enough to be chunked (its blobs hold only it) and one small enough to be packed.
BIG, SMALL_FILE = "weights/big.bin", "config.json"


def _saved(storage, tmp_path: Path):
    """A committed checkpoint of one chunked and one packed file; (store, manifest)."""
    store = CheckpointStore(storage, options())
    src = write_tree(tmp_path / "src", {BIG: rand(2 * CHUNK + 5, 1), SMALL_FILE: b'{"lr": 1}'})
    return store, store.save(str(src), make_scope(), metadata={"step": 1})


def _blob_key(store: CheckpointStore, manifest, path: str) -> str:
    """The storage key of the (first) blob holding ``path``, as listed by the store."""
    entry = next(f for f in manifest.files if f.path == path)
    blob = entry.chunks[0].blob
    return next(o.key for o in store.storage.list("") if o.key.rsplit("/", 1)[-1] == blob)


# Each case returns (call raising the error, expected fields); a field not named is not checked.
def missing_manifest(tmp_path):
    store, m = _saved(MemoryStorage(), tmp_path)
    store.storage.delete(m.key)
    return (lambda: store.read(m.key)), {"key": m.key, "url": store.url}


def not_a_manifest_key(tmp_path):
    store = CheckpointStore(MemoryStorage(), options())
    return (lambda: store.read("manifests/not-a-key.json")), {"key": "manifests/not-a-key.json"}


def file_not_in_checkpoint(tmp_path):
    store, m = _saved(MemoryStorage(), tmp_path)
    return (lambda: store.open(m, "weights/missing.bin")), {
        "key": m.key,
        "path": "weights/missing.bin",
    }


def truncated_manifest(tmp_path):
    store, m = _saved(LocalStorage(str(tmp_path / "store")), tmp_path)
    data = store.storage.get_bytes(m.key)
    store.storage.put_bytes(m.key, data[: len(data) // 2])
    return (lambda: store.read(m.key)), {"key": m.key}


def corrupted_chunk_blob(tmp_path):
    store, m = _saved(LocalStorage(str(tmp_path / "store")), tmp_path)
    key = _blob_key(store, m, BIG)
    store.storage.put_bytes(key, b"x" * len(store.storage.get_bytes(key)))  # same size, wrong
    return (lambda: store.load(m, str(tmp_path / "out"))), {"key": m.key, "path": BIG}


def corrupted_packed_blob_read_by_file(tmp_path):
    store, m = _saved(MemoryStorage(), tmp_path)
    key = _blob_key(store, m, SMALL_FILE)
    store.storage.put_bytes(key, b"x" * len(store.storage.get_bytes(key)))
    return (lambda: store.open(m, SMALL_FILE).read()), {"key": m.key, "path": SMALL_FILE}


def missing_blob(tmp_path):
    store, m = _saved(MemoryStorage(), tmp_path)
    store.storage.delete(_blob_key(store, m, BIG))
    return (lambda: store.open(m, BIG).read()), {"key": m.key, "path": BIG, "url": store.url}


def missing_blob_on_load(tmp_path):
    store, m = _saved(LocalStorage(str(tmp_path / "store")), tmp_path)
    store.storage.delete(_blob_key(store, m, BIG))
    return (lambda: store.load(m, str(tmp_path / "out"))), {"key": m.key, "path": BIG}


def blob_replaced_by_a_symlink(tmp_path):
    store, m = _saved(LocalStorage(str(tmp_path / "store")), tmp_path)
    key = _blob_key(store, m, BIG)
    path = store.storage.local_path(key)
    os.unlink(path)
    os.symlink(str(tmp_path / "elsewhere"), path)
    return (lambda: store.storage.get_bytes(key)), {
        "key": key,
        "url": store.storage.full_url(key),
    }


def invalid_storage_key(tmp_path):
    storage = MemoryStorage()
    return (lambda: storage.get_bytes("a/../b")), {"key": "a/../b"}


CASES: list[tuple[str, Callable, type]] = [
    ("a missing manifest key", missing_manifest, CheckpointNotFound),
    ("a string that is no manifest key", not_a_manifest_key, ManifestError),
    ("a file the checkpoint does not have", file_not_in_checkpoint, CheckpointNotFound),
    ("a truncated manifest", truncated_manifest, ManifestError),
    ("a corrupted blob of a chunked file (load)", corrupted_chunk_blob, CheckpointIntegrityError),
    (
        "a corrupted blob of a packed file (open)",
        corrupted_packed_blob_read_by_file,
        CheckpointIntegrityError,
    ),
    ("a missing blob (open)", missing_blob, CheckpointIncomplete),
    ("a missing blob (load)", missing_blob_on_load, CheckpointIncomplete),
    ("a blob replaced by a symlink", blob_replaced_by_a_symlink, StorageError),
    ("an invalid storage key", invalid_storage_key, StorageError),
]


@pytest.mark.parametrize("case, situation, expected", CASES, ids=[c[0] for c in CASES])
def test_errors_raised_by_real_code_carry_the_key_and_path_and_name_them(
    tmp_path, case, situation, expected
):
    call, fields = situation(tmp_path)
    with pytest.raises(expected) as info:
        call()
    exc = info.value
    for name, value in fields.items():
        assert getattr(exc, name) == value, (case, name)
        assert str(value) in str(exc), (case, name)  # the message names it too
    for name in errors.FIELDS:  # every field is an attribute, None when not known
        assert hasattr(exc, name)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and copy.fields == exc.fields and str(copy) == str(exc)


def _list_manifests(root: str):
    return LocalStorage(root).list("manifests/")


def test_an_unreadable_directory_fails_the_listing_naming_it_across_a_process(tmp_path):
    """A listing that meets a directory it cannot read raises a StorageError whose ``key`` is
    the prefix listed and ``url`` the store location; the error comes back from another
    process (pickled) with its fields."""
    with world_tmpdir() as world:
        root = os.path.join(world, "store")
        store, m = _saved(LocalStorage(root), tmp_path)
        for dirpath, dirs, _files in os.walk(root):
            for d in dirs:
                os.chmod(os.path.join(dirpath, d), 0o777)
        for dirpath, _dirs, _files in os.walk(root):
            os.chmod(dirpath, 0o777)
        task_dir = os.path.dirname(store.storage.local_path(m.key))
        os.chmod(task_dir, 0)
        with pytest.raises(StorageError) as info:
            run_unprivileged(_list_manifests, root)
    exc = info.value
    assert exc.key == "manifests/" and exc.url == root + "/manifests/"
    assert "PermissionError" in exc.reason and os.path.basename(task_dir) in exc.reason
    assert exc.url in str(exc) and "never skips what it cannot read" in str(exc)


# --------------------------------------------------------------------------- the classes
ALL = [getattr(errors, n) for n in errors.__all__] + [TrainingStateError]


@pytest.mark.parametrize("cls", ALL, ids=[c.__name__ for c in ALL])
def test_a_message_given_is_kept_and_printing_is_metaflows(cls):
    exc = cls("Checkpoint K is broken: do X.")
    assert isinstance(exc, MetaflowException) and isinstance(exc, CheckpointException)
    assert str(exc) == exc.message == "Checkpoint K is broken: do X."
    assert exc.headline and exc.headline != MetaflowException.headline
    assert exc.fields == {"key": None, "path": None, "url": None, "reason": None}
    printed = str(MetaflowException("m", 12))  # MetaflowException's own prefix, unchanged
    assert str(cls("m", 12)) == printed
    copy = pickle.loads(pickle.dumps(cls("m", 12, key="k")))
    assert (copy.message, copy.line_no, copy.key, str(copy)) == ("m", 12, "k", printed)


@pytest.mark.parametrize("cls", ALL, ids=[c.__name__ for c in ALL])
def test_without_a_message_the_fields_make_one(cls):
    bare = cls()
    assert bare.message and "{" not in bare.message and "[" not in bare.message
    assert "None" not in bare.message  # a field not given leaves no trace
    full = cls(key="manifests/K.json", path="w/a.bin", url="s3://b/p", reason="because")
    for value in ("manifests/K.json", "w/a.bin", "s3://b/p", "because"):
        if "{%s}" % _field_of(value) in cls.template:
            assert value in full.message
    assert full.key == "manifests/K.json" and full.path == "w/a.bin"
    copy = pickle.loads(pickle.dumps(full))
    assert type(copy) is cls and copy.fields == full.fields and copy.message == full.message


def _field_of(value: str) -> str:
    return {"manifests/K.json": "key", "w/a.bin": "path", "s3://b/p": "url", "because": "reason"}[
        value
    ]


@pytest.mark.parametrize(
    "exc, message",
    [
        (
            CheckpointIntegrityError(key="K", path="w/a.bin"),
            "Checkpoint K: stored data of w/a.bin does not match its recorded hash; it is "
            "corrupt. Load another checkpoint.",
        ),
        (
            CheckpointIncomplete(key="K", path="a", url="s3://b", reason="blob B is missing"),
            "Checkpoint K is incomplete: data of a missing from s3://b (blob B is missing); "
            "load another checkpoint.",
        ),
        (CheckpointNotFound(key="K", url="/store"), "No checkpoint K in /store."),
        (
            ManifestError(key="K", reason="truncated"),
            "Manifest K is unreadable or invalid: truncated.",
        ),
        (StorageError(url="s3://b/k", reason="EIO"), "Checkpoint storage failed at s3://b/k: EIO."),
        (
            CheckpointConfigError(path="/x", reason="not a directory"),
            "Invalid checkpoint configuration for /x: not a directory.",
        ),
    ],
)
def test_templates_read_as_sentences(exc, message):
    assert str(exc) == message


# --------------------------------------------------------------------------- the drawn tree
def test_the_docstring_draws_every_class_under_its_parent():
    """The tree in errors.py's docstring is the real class hierarchy, one line per class."""
    lines = [ln for ln in errors.__doc__.splitlines() if re.search(r"[├└]── \w", ln)]
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = [(-1, "MetaflowException")]
    for ln in lines:
        match = re.search(r"[├└]── (\w+)", ln)
        depth = match.start()
        while stack[-1][0] >= depth:
            stack.pop()
        drawn[match.group(1)] = stack[-1][1]
        stack.append((depth, match.group(1)))
    actual = {c.__name__: c.__mro__[1].__name__ for c in ALL}
    assert drawn == actual
