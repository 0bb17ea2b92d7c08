"""Bad input is rejected early, with named errors, and without writing anything."""

from __future__ import annotations

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    MAX_METADATA_BYTES,
    manifest_key,
    parse_key,
    validate_metadata,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import validate_name
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointNotFound,
    ManifestError,
)

from .helpers import make_scope, tiny


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b",
        "..",
        "x..y",
        "\n",
        "a\n",
        "a b",
        " a",
        ".hidden",
        "-x",
        "a\x00",
        "é",
        "x" * 101,
        None,
        5,
    ],
)
def test_invalid_names_are_rejected(name):
    """Names that are empty, too long, path-like or with odd characters raise a config error."""
    with pytest.raises(CheckpointConfigError):
        validate_name(name)


@pytest.mark.parametrize("name", ["mfchckpt", "best-model", "epoch_1.5", "_x", "A" * 100])
def test_valid_names_are_accepted(name):
    """Ordinary series names, up to 100 characters, are accepted unchanged."""
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "metadata",
    [
        [1, 2],
        "epoch=3",
        {"a": {1, 2}},
        {"a": object()},
        {(1, 2): "tuple key"},
        {"blob": "x" * MAX_METADATA_BYTES},
    ],
    ids=["list", "str", "set", "object", "tuple-key", "too-big"],
)
def test_invalid_metadata_is_rejected(metadata):
    """Metadata must be a JSON-able dict within 64 KiB; anything else is a config error."""
    with pytest.raises(CheckpointConfigError):
        validate_metadata(metadata)


def test_valid_metadata_is_normalised_to_json():
    """Metadata comes back exactly as it will be stored (tuples become lists); None is {}."""
    assert validate_metadata(None) == {}
    meta = {"epoch": 3, "loss": 0.25, "tags": ("a", "b"), "nested": {"ok": True, "n": None}}
    assert validate_metadata(meta) == {
        "epoch": 3,
        "loss": 0.25,
        "tags": ["a", "b"],
        "nested": {"ok": True, "n": None},
    }


@pytest.mark.parametrize(
    "kwargs", [{"name": "a/b"}, {"metadata": {"x": {1, 2}}}, {"metadata": [1]}]
)
def test_save_with_bad_arguments_writes_nothing(store, memory, tmp_path, kwargs):
    """An invalid name or metadata fails before any byte reaches storage."""
    src = tiny(tmp_path)
    with pytest.raises(CheckpointConfigError):
        store.save(str(src), make_scope(), **kwargs)
    assert memory.list() == []


def test_save_of_missing_path_writes_nothing(store, memory, tmp_path):
    """save() of a path that does not exist is a config error and leaves storage untouched."""
    with pytest.raises(CheckpointConfigError, match="no such file"):
        store.save(str(tmp_path / "nope"), make_scope())
    assert memory.list() == []


def test_read_of_missing_checkpoint_is_not_found(store):
    """Reading a well-formed key that was never committed raises CheckpointNotFound."""
    key = manifest_key(make_scope(), 1_700_000_000_000, 0, True, "deadbeefdeadbeef", "mfchckpt")
    with pytest.raises(CheckpointNotFound, match="deadbeefdeadbeef"):
        store.read(key)


def test_deleted_checkpoint_is_gone_but_other_checkpoints_load(store, memory, tmp_path):
    """delete() removes one checkpoint from listings and reads; shared blobs stay for others."""
    src = tiny(tmp_path, b"same bytes")
    a = store.save(str(src), make_scope())
    b = store.save(str(src), make_scope())
    store.delete(a.key)
    assert [h.key for h in store.headers(make_scope().task_prefix())] == [b.key]
    with pytest.raises(CheckpointNotFound):
        store.read(a.key)
    store.load(store.read(b.key), str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "state.txt").read_bytes() == b"same bytes"


@pytest.mark.parametrize("key", ["", "garbage", "blobs/ab/abcdef", "manifests/x.json"])
def test_delete_of_non_checkpoint_key_is_not_found(store, key):
    """delete() refuses keys that are not checkpoint manifests (never deletes blobs)."""
    with pytest.raises(CheckpointNotFound):
        store.delete(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "garbage",
        "manifests/a/b/c.json",
        "manifests/ns/f/s/_/1/2/notakey.json",
        "manifests/ns/f/s/_/1/2/1700000000000-0-000000-X-abc-name.json",
        "manifests/ns/f/s/_/1/2/1700000000000-zero-000000-L-abc-name.json",
        "manifests/ns/f/s/_/1/2/1700000000000-0-000000-L-abc-name.txt",
        "blobs/ns/f/s/_/1/2/1700000000000-0-000000-L-abc-name.json",
        "manifests/ns/f/s/_/1/2/3/1700000000000-0-000000-L-abc-name.json",
    ],
)
def test_parse_key_rejects_garbage(key):
    """Strings that are not manifest keys raise ManifestError instead of parsing to nonsense."""
    with pytest.raises(ManifestError):
        parse_key(key)


def test_tiny_chunk_size_is_a_config_error():
    """A chunk size below 4 KiB is rejected up front."""
    with pytest.raises(CheckpointConfigError, match="chunk_size"):
        TransferOptions(chunk_size=1000)
