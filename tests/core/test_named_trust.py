"""Named checkpoints cannot be taken over by accident (core, on the memory and local stores).

Every version records its publisher; a bare name resolves among the versions published from the
reader's namespace or promoted to it; ``name@<version>`` pins one version whoever published it;
promotions are markers with a log.
"""

from __future__ import annotations

import json

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    CheckpointReference,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core import layout, promotions
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import manifest_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.promotions import (
    publisher_record,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointNotFound,
    CheckpointScopeError,
)

from .helpers import make_scope, write_tree

ALICE = publisher_record("alice", "user:alice", "cli")
BOB = publisher_record("bob", "user:bob", "client")
PROD = "production:TrainFlow-0-abcd"
BY_ALICE = {"user": "alice", "namespace": "user:alice"}


def upload(store, tmp_path, content: bytes, publisher, name: str = "resnet50", metadata=None):
    src = write_tree(tmp_path / ("src-%d" % len(list(tmp_path.iterdir()))), {"m.pt": content})
    return store.save(
        str(src),
        library_scope(name),
        name=name,
        metadata=metadata,
        reuse_identical=True,
        publisher=publisher,
    )


def test_every_version_records_its_publisher(any_store, tmp_path):
    m = upload(any_store, tmp_path, b"weights", ALICE)
    stored = any_store.read(m.key)
    assert stored.source["publisher"] == {
        "user": "alice",
        "namespace": "user:alice",
        "origin": "cli",
    }
    assert stored.source["kind"] == "dir"  # the rest of source is unchanged
    # References carry it, built from the manifest or from a listing's summary alike.
    url = any_store.storage.full_url(m.key)
    assert CheckpointReference.from_manifest(stored, any_store.url, url).publisher == ALICE
    header = any_store.headers(library_scope("resnet50").step_prefix())[0]
    summary = any_store.summaries([header])[m.key]
    assert CheckpointReference.from_summary(header, summary, any_store.url, url).publisher == ALICE
    # A task's checkpoint: its task is its publisher.
    task = any_store.save(str(tmp_path / "src-0"), make_scope(namespace="user:carol"))
    ref = CheckpointReference.from_manifest(task, any_store.url, "")
    assert ref.publisher == {
        "user": "carol",
        "namespace": "user:carol",
        "origin": "TrainFlow/100/train/7",
    }


def test_a_name_resolves_among_the_readers_namespace(any_store, tmp_path):
    mine = upload(any_store, tmp_path, b"alice's weights", ALICE)
    theirs = upload(any_store, tmp_path, b"bob's newer weights", BOB)  # newer, someone else's

    got = any_store.resolve_named("resnet50", "user:alice")
    assert (got.manifest.key, got.trust) == (mine.key, "published")
    assert [(h.id, reason) for h, _, reason in got.passed_over] == [
        (theirs.id, "published by user:bob via client")
    ]
    assert any_store.named("resnet50@latest", "user:alice").key == mine.key
    assert any_store.named("resnet50", "user:bob").key == theirs.key
    # namespace(None): any publisher, the newest version (the behaviour before publishers).
    assert any_store.resolve_named("resnet50", None).trust == "any"
    assert any_store.named("resnet50", None).key == theirs.key


def test_a_namespace_with_no_trusted_version_is_refused_naming_the_fix(any_store, tmp_path):
    upload(any_store, tmp_path, b"v1", ALICE)
    newest = upload(any_store, tmp_path, b"v2", ALICE)
    with pytest.raises(CheckpointScopeError) as err:
        any_store.named("resnet50", PROD)
    message = err.value.message
    assert "No version of 'resnet50' was published from namespace %s" % PROD in message
    assert "pin it: 'resnet50@%s'" % newest.id in message
    assert "metaflow checkpoint promote resnet50@%s --to %s" % (newest.id, PROD) in message
    assert "user:alice via cli" in message
    # A name nobody published stays a plain "not found".
    with pytest.raises(CheckpointNotFound, match="No checkpoint named 'bert'"):
        any_store.named("bert", PROD)


def test_a_pinned_version_resolves_whoever_published_it(any_store, tmp_path):
    upload(any_store, tmp_path, b"alice", ALICE)
    theirs = upload(any_store, tmp_path, b"bob", BOB)
    got = any_store.resolve_named("resnet50@" + theirs.id[:6], "user:alice")
    assert (got.manifest.key, got.trust) == (theirs.key, "pinned")
    assert any_store.named("resnet50@" + theirs.id, PROD).key == theirs.key


def test_promotion_lets_a_namespace_use_a_version_and_a_newer_upload_does_not_take_over(
    any_store, tmp_path
):
    storage = any_store.storage
    v1 = upload(any_store, tmp_path, b"v1 by alice", ALICE)
    event = promotions.promote(storage, v1, PROD, by=BY_ALICE, at_ms=1_700_000_000_000)
    assert event["action"] == "promote" and event["by"] == BY_ALICE
    got = any_store.resolve_named("resnet50", PROD)
    assert (got.manifest.key, got.trust) == (v1.key, "promoted")

    # Someone publishes a newer version: production keeps using the promoted one.
    v2 = upload(any_store, tmp_path, b"v2 by bob", BOB)
    assert any_store.named("resnet50", PROD).key == v1.key
    assert any_store.named("resnet50", "user:bob").key == v2.key

    # Promoting v2 moves production to it; withdrawing that moves it back.
    promotions.promote(storage, v2, PROD, by=BY_ALICE, at_ms=1_700_000_001_000)
    assert any_store.named("resnet50", PROD).key == v2.key
    assert promotions.promotions_of(storage, "resnet50") == {v1.id: [PROD], v2.id: [PROD]}
    promotions.unpromote(storage, v2, PROD, by=BY_ALICE, at_ms=1_700_000_002_000)
    assert any_store.named("resnet50", PROD).key == v1.key

    log = promotions.history(storage, "resnet50")
    assert [(e["action"], e["version"], e["namespace"]) for e in log] == [
        ("promote", v1.id, PROD),
        ("promote", v2.id, PROD),
        ("unpromote", v2.id, PROD),
    ]
    assert log[0]["at"].startswith("2023-11-14T22:13:20") and log[0]["key"] == v1.key
    assert [e["action"] for e in promotions.history(storage, "resnet50", v2.id)] == [
        "promote",
        "unpromote",
    ]
    # Other namespaces are unaffected by promotions to production.
    assert any_store.named("resnet50", "user:alice").key == v1.key


def test_promotion_input_is_checked_before_anything_is_written(any_store, tmp_path):
    storage = any_store.storage
    v1 = upload(any_store, tmp_path, b"v1", ALICE)
    before = sorted(o.key for o in storage.list(""))
    with pytest.raises(CheckpointConfigError, match="'production' is not a Metaflow namespace"):
        promotions.promote(storage, v1, "production", by=BY_ALICE)
    with pytest.raises(CheckpointNotFound, match="is not promoted to %s" % PROD):
        promotions.unpromote(storage, v1, PROD, by=BY_ALICE)
    task = any_store.save(str(tmp_path / "src-0"), make_scope())
    with pytest.raises(CheckpointConfigError, match="Only versions of named checkpoints"):
        promotions.promote(storage, task, PROD, by=BY_ALICE)
    assert sorted(o.key for o in storage.list("")) == before + [task.key]


def test_versions_without_a_recorded_publisher_are_trusted_by_no_namespace(any_store, tmp_path):
    # Saved before publishers were recorded (or with a malformed record).
    legacy = upload(any_store, tmp_path, b"legacy", None)
    assert "publisher" not in any_store.read(legacy.key).source
    with pytest.raises(CheckpointScopeError, match="unknown publisher"):
        any_store.named("resnet50", "user:alice")
    assert any_store.named("resnet50", None).key == legacy.key
    assert any_store.named("resnet50@" + legacy.id, "user:alice").key == legacy.key
    promotions.promote(any_store.storage, legacy, "user:alice", by=BY_ALICE)
    assert any_store.named("resnet50", "user:alice").key == legacy.key

    for bad in ({"namespace": 5}, {"namespace": ""}, "user:alice", {"namespace": "x" * 600}):
        assert promotions.publisher_of({"publisher": bad}) is None
    unknown = publisher_record(None, None, "client")  # root without a user name
    assert promotions.publisher_of({"publisher": unknown}) == unknown
    assert not promotions.trusted(unknown, "id", "user:alice", frozenset())


def test_identical_upload_reuses_only_a_version_of_the_same_namespace(any_store, tmp_path):
    first = upload(any_store, tmp_path, b"same bytes", ALICE)
    # Bob uploads the same content: his own version (reusing alice's would give him a version
    # his namespace does not trust); no data moves either way.
    bobs = upload(any_store, tmp_path, b"same bytes", BOB)
    assert bobs.key != first.key and bobs.stats["bytes_uploaded"] == 0
    assert any_store.named("resnet50", "user:bob").key == bobs.key
    again = upload(any_store, tmp_path, b"same bytes", ALICE)
    assert again.key == first.key and again.stats["reused"] is True
    assert len(any_store.headers(library_scope("resnet50").step_prefix())) == 2


def test_a_damaged_newer_version_is_passed_over_not_trusted(any_store, tmp_path):
    good = upload(any_store, tmp_path, b"good", ALICE)
    scope = library_scope("resnet50")
    damaged = manifest_key(scope, good.created_ms + 1000, 0, True, "f" * 16, "resnet50")
    any_store.storage.put_bytes(damaged, b'{"format": "metaflow-checkpointing/1", "id":')
    got = any_store.resolve_named("resnet50", "user:alice")
    assert got.manifest.key == good.key
    assert [(h.key, reason.split(":")[0]) for h, _, reason in got.passed_over] == [
        (damaged, "unreadable")
    ]


def test_promotion_markers_are_small_objects_beside_the_manifests(any_store, tmp_path):
    v1 = upload(any_store, tmp_path, b"v1", ALICE)
    promotions.promote(any_store.storage, v1, PROD, by=BY_ALICE, at_ms=1_700_000_000_000)
    keys = sorted(o.key for o in any_store.storage.list(layout.PROMOTIONS + "/"))
    assert keys[0].startswith("promotions/resnet50/log/1700000000000-")
    assert keys[1] == "promotions/resnet50/to/production%3ATrainFlow-0-abcd/" + v1.id
    marker = json.loads(any_store.storage.get_bytes(keys[1]))
    assert (marker["version"], marker["namespace"], marker["by"]) == (v1.id, PROD, BY_ALICE)
