"""Listing and manifests: order, filters, key encoding, and the documented manifest fields."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import step_prefix
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    FORMAT,
    manifest_key,
    parse_key,
)

from .helpers import make_scope, sample_spec, tiny, write_tree


def test_headers_are_newest_first(store, tmp_path):
    """Listing returns checkpoints newest first across runs, tasks and attempts."""
    saved = [
        store.save(str(tiny(tmp_path)), make_scope(run=r, task=t, attempt=a))
        for r, t, a in [("1", "1", 0), ("1", "1", 1), ("2", "5", 0), ("1", "2", 0)]
    ]
    keys = [h.key for h in store.headers(make_scope().step_prefix())]
    assert keys == [m.key for m in reversed(saved)]


def test_header_filters(store, tmp_path):
    """name, run, task, attempt and latest_only filters each select exactly the matching ones."""
    s = make_scope
    a = store.save(str(tiny(tmp_path)), s(run="1", task="1"), name="mfchckpt")
    b = store.save(str(tiny(tmp_path)), s(run="1", task="1", attempt=1), name="best")
    c = store.save(str(tiny(tmp_path)), s(run="1", task="2"), latest=False)
    d = store.save(str(tiny(tmp_path)), s(run="2", task="3", attempt=1), name="best")
    prefix = s().step_prefix()

    def keys(**kw):
        return {h.key for h in store.headers(prefix, **kw)}

    assert keys() == {a.key, b.key, c.key, d.key}
    assert keys(name="best") == {b.key, d.key}
    assert keys(run="1") == {a.key, b.key, c.key}
    assert keys(run=2) == {d.key}
    assert keys(task="1") == {a.key, b.key}
    assert keys(attempt=1) == {b.key, d.key}
    assert keys(latest_only=True) == {a.key, b.key, d.key}
    assert keys(run="1", name="best", attempt=1) == {b.key}
    assert keys(name="nope") == set()


def test_headers_under_task_prefix_exclude_neighbours(store, tmp_path):
    """A task's listing excludes tasks and splits whose ids merely share a prefix (7 vs 70)."""
    mine = store.save(str(tiny(tmp_path)), make_scope(task="7", foreach="1"))
    store.save(str(tiny(tmp_path)), make_scope(task="70", foreach="1"))
    store.save(str(tiny(tmp_path)), make_scope(task="7", foreach="10"))
    assert [h.key for h in store.headers(make_scope(task="7", foreach="1").task_prefix())] == [
        mine.key
    ]


@pytest.mark.parametrize(
    "namespace",
    ["user:alice", "production:abc/def", "user:al ice", "100%:x", "ünïcode", "a/../b", ".."],
)
def test_scope_roundtrips_through_the_key(store, tmp_path, namespace):
    """Namespaces with ':', '/', '%', spaces or '..' are encoded safely and parse back exactly."""
    scope = make_scope(namespace=namespace, flow="Flow", step="s", foreach="2.1", run="argo-x/1")
    m = store.save(str(tiny(tmp_path)), scope, name="best-model.v2")
    assert m.key.count("/") == 7
    h = parse_key(m.key)
    assert h.scope == scope
    assert h.name == "best-model.v2"
    assert h.latest is True
    assert [x.key for x in store.headers(step_prefix(namespace, "Flow", "s"))] == [m.key]
    assert store.read(m.key).scope == scope


def test_namespaces_do_not_overlap(store, tmp_path):
    """'production:abc' does not list checkpoints of 'production:abc/def' (or vice versa)."""
    a = store.save(str(tiny(tmp_path)), make_scope(namespace="production:abc"))
    b = store.save(str(tiny(tmp_path)), make_scope(namespace="production:abc/def"))
    assert [h.key for h in store.headers(make_scope(namespace="production:abc").step_prefix())] == [
        a.key
    ]
    prefix = make_scope(namespace="production:abc/def").step_prefix()
    assert [h.key for h in store.headers(prefix)] == [b.key]


def test_manifest_key_roundtrip():
    """manifest_key and parse_key are inverses (what a listing shows is what was saved)."""
    scope = make_scope(attempt=3)
    key = manifest_key(scope, 1_700_000_000_123, 42, False, "0123456789abcdef", "my-name")
    h = parse_key(key)
    assert (h.scope, h.created_ms, h.seq, h.latest, h.id, h.name) == (
        scope,
        1_700_000_000_123,
        42,
        False,
        "0123456789abcdef",
        "my-name",
    )


def test_manifest_has_documented_fields(store, memory, tmp_path):
    """The stored manifest records format, scope, name, latest, metadata, time, files, stats."""
    src = write_tree(tmp_path / "src", sample_spec())
    before = time.time()
    m = store.save(
        str(src), make_scope(attempt=2), name="best", metadata={"epoch": 7}, latest=False
    )
    doc = json.loads(memory.get_bytes(m.key))
    assert doc["format"] == FORMAT
    assert doc["scope"] == make_scope(attempt=2).to_dict()
    assert doc["name"] == "best"
    assert doc["latest"] is False
    assert doc["metadata"] == {"epoch": 7}
    created = datetime.fromisoformat(doc["created_on"]).timestamp()
    assert before - 1 <= created <= time.time() + 1
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    paths = {f["path"] for f in doc["files"]}
    assert paths == {p for p, v in sample_spec().items() if v is not None}
    for f in doc["files"]:
        assert {"path", "size", "mode", "chunks"} <= set(f)
        assert sum(c[2] for c in f["chunks"]) == f["size"]
    assert set(doc["dirs"]) == {"logs/empty_dir", "a/b/c"}
    stats = doc["stats"]
    assert stats["bytes_read"] == total
    assert stats["bytes_uploaded"] + stats["bytes_deduplicated"] == total
    assert stats["bytes_uploaded"] == total  # first save into an empty store
    assert {"scan", "upload"} <= set(stats["seconds"])
    read = store.read(m.key)
    assert (read.name, read.latest, read.metadata, read.size) == (
        "best",
        False,
        {"epoch": 7},
        total,
    )


def test_read_many_keeps_order(store, tmp_path):
    """read_many returns manifests in the order of the keys given."""
    ms = [store.save(str(tiny(tmp_path)), make_scope(task=str(i))) for i in range(5)]
    keys = [m.key for m in reversed(ms)]
    assert [m.key for m in store.read_many(keys)] == keys


def _client(root):
    from metaflow_extensions.checkpointing.plugins.checkpointing.client.checkpoint import (
        Checkpoint,
    )

    return Checkpoint(root=str(root))


def test_a_field_no_listed_checkpoint_has_is_a_typo_naming_the_fields(tmp_path):
    """order_by, where (dict) and best(metric=) on a field no listed checkpoint has raise
    CheckpointConfigError listing the fields there are (issue 15, item 5); a field some have
    is not an error; nor is anything on an empty listing, where there is nothing to check."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointConfigError,
        CheckpointNotFound,
    )

    c = _client(tmp_path / "store")
    assert c.list(order_by="-los") == [] and c.list(where={"los": 1}) == []
    with pytest.raises(CheckpointNotFound):
        c.best(metric="los")  # nothing listed: not found, not a typo
    c.save(str(tiny(tmp_path)), name="model", metadata={"loss": 0.5, "epoch": 1})
    c.save(str(tiny(tmp_path)), name="model", metadata={"loss": 0.2, "note": "x"})

    with pytest.raises(CheckpointConfigError) as exc:
        c.list(order_by="-los")
    assert exc.value.message == (
        "order_by='-los': no listed checkpoint has a field 'los'; order by a metadata field "
        "(epoch, loss, note) or by created_on, size, attempt, files_count."
    )
    with pytest.raises(CheckpointConfigError) as exc:
        c.list(where={"los": 0.5, "epoch": 1})
    assert exc.value.message == (
        "where={'los': 0.5, 'epoch': 1}: no listed checkpoint has a metadata field 'los'; "
        "the fields are: epoch, loss, note."
    )
    with pytest.raises(CheckpointConfigError) as exc:
        c.best(metric="los", mode="max")
    assert exc.value.message == (
        "best(metric='los'): no checkpoint of the named checkpoints has a metadata field "
        "'los'; the fields are: epoch, loss, note."
    )
    # Fields only some checkpoints have, and the reference's own fields, are accepted.
    assert [r.metadata.get("epoch") for r in c.list(order_by="epoch")] == [1, None]
    assert len(c.list(order_by="-size")) == 2 and c.list(where={"note": "x"})
    assert c.best(metric="loss").metadata["loss"] == 0.2
    with pytest.raises(CheckpointNotFound, match="numeric metadata field 'note'"):
        c.best(metric="note")  # the field exists, no value is a number
