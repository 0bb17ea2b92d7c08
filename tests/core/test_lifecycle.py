"""Retention, pins, garbage collection and accounting on real stores (memory and local)."""

from __future__ import annotations

import threading
import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import retention
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    BLOBS_PREFIX,
    blob_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import Item, build, plan
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointIncomplete,
    ManifestError,
)

from .helpers import CHUNK, make_scope, options, rand, write_tree


def items(metrics: list, start_ms: int = 0, every_ms: int = 1000, latest: bool = True):
    """Items oldest first, with metadata dicts given by ``metrics``."""
    return [
        Item("k%02d" % i, (start_ms + i * every_ms, i), start_ms + i * every_ms, m, latest)
        for i, m in enumerate(metrics)
    ]


# ------------------------------------------------------------------------------ planning
def test_keep_last_and_best_compose_and_the_newest_is_protected():
    its = items([{"loss": x} for x in [5.0, 1.0, 4.0, 2.0, 3.0, 6.0]])
    p = plan(its, build(keep_last=2, keep_best="loss:min:2"))
    assert sorted(p.keep) == ["k01", "k03", "k04", "k05"]
    assert p.keep["k01"] == ["best loss:min (#1 of 2)"]
    assert p.keep["k05"] == [
        "newest latest=True (what a retry or resume loads)",
        "keep_last 2 (#1)",
    ]
    assert sorted(p.delete) == ["k00", "k02"]
    # Only keep-best: the newest (what a retry would load) is still kept.
    p = plan(its, build(keep_best="loss:min:1"))
    assert sorted(p.keep) == ["k01", "k05"]
    p = plan(its, build(keep_best="loss:max:1"), protect_newest=False)
    assert list(p.keep) == ["k05"] and len(p.delete) == 5


def test_pinned_checkpoints_are_always_kept():
    its = items([{}] * 5)
    p = plan(its, build(keep_last=1), pinned=frozenset({"k00", "k02"}))
    assert sorted(p.keep) == ["k00", "k02", "k04"]
    assert p.keep["k00"] == ["pinned"]


def test_unknown_metric_warns_and_deletes_nothing():
    its = items([{"loss": 1.0}, {"loss": 2.0}, {"acc": 3}])
    p = plan(its, build(keep_last=1, keep_best="val_loss:min:1"), group="F/train[_]:mfchckpt")
    # Every checkpoint is reported as kept (kept + deleted = all), saying why.
    assert p.delete == [] and sorted(p.keep) == ["k00", "k01", "k02"]
    assert p.keep["k00"] == ["rule not applicable (best val_loss:min:1: no numeric 'val_loss')"]
    assert "No checkpoint of F/train[_]:mfchckpt has a numeric 'val_loss'" in p.warnings[0]


def test_keep_every_steps_and_minutes():
    its = items([{"step": s} for s in [0, 400, 900, 1000, 1500, 2100, 2500]])
    p = plan(its, build(keep_every_steps=1000), protect_newest=False)
    assert sorted(p.keep) == ["k00", "k03", "k05"]  # first save at or after 0, 1000, 2000
    its = items([{}] * 7, every_ms=20_000)  # one save every 20 s
    p = plan(its, build(keep_every_minutes=1), protect_newest=False)
    assert sorted(p.keep) == ["k00", "k03", "k06"]
    its = items([{}, {"step": True}])
    p = plan(its, build(keep_every_steps=10))
    assert p.delete == [] and "numeric 'step'" in p.warnings[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_last": -1}, "keep_last=-1 must be a whole number"),
        ({"keep_last": "3"}, "keep_last='3'"),
        ({"keep_best": "loss:median"}, "mode must be 'min'"),
        ({"keep_best": "loss:min:0"}, "count must be at least 1"),
        ({"keep_best": "loss:min:x"}, "count 'x' is not an integer"),
        ({"keep_best": ["loss:min", "loss:max:2"]}, "both by 'min' and by 'max': contradictory"),
        ({"keep_every_steps": 0}, "keep_every_steps=0"),
        ({"keep_every_minutes": -5}, "keep_every_minutes=-5"),
    ],
)
def test_bad_retention_rules_are_named(kwargs, message):
    with pytest.raises(CheckpointConfigError, match=message.replace("(", r"\(")):
        build(**kwargs)


def test_empty_policy_keeps_everything():
    assert retention.Retention().empty
    assert plan(items([{}] * 3), build()).delete == []


# ------------------------------------------------------------------------------ store level
def _save_series(store, tmp_path, n: int, **scope):
    src = tmp_path / "src"
    out = []
    for i in range(n):
        write_tree(src, {"w.bin": rand(2 * CHUNK, 100 + i), "cfg.json": b"{}"})
        out.append(store.save(str(src), make_scope(**scope), metadata={"loss": 10.0 - i % 4}))
    return out


def test_prune_deletes_manifests_and_keeps_pins(any_store, tmp_path):
    saved = _save_series(any_store, tmp_path, 6)
    any_store.pin(saved[0].key)
    headers = any_store.headers(make_scope().task_prefix())
    dry = any_store.prune(headers, build(keep_last=2), group_of=lambda h: "g", dry_run=True)
    assert sorted(dry[0][1].delete) == sorted(m.key for m in saved[1:4])
    assert len(any_store.headers(make_scope().task_prefix())) == 6  # dry run deleted nothing
    any_store.prune(headers, build(keep_last=2), group_of=lambda h: "g")
    left = {h.key for h in any_store.headers(make_scope().task_prefix())}
    assert left == {saved[0].key, saved[4].key, saved[5].key}
    with pytest.raises(CheckpointConfigError, match="is pinned; unpin it first"):
        any_store.delete(saved[0].key)
    any_store.pin(saved[0].key, pinned=False)
    any_store.delete(saved[0].key)
    assert len(any_store.headers(make_scope().task_prefix())) == 2


def _blob_keys(store) -> set:
    return {o.key for o in store.storage.list(BLOBS_PREFIX)}


def test_gc_reclaims_only_unreferenced_old_blobs(any_store, tmp_path):
    saved = _save_series(any_store, tmp_path, 4)
    before = _blob_keys(any_store)
    for m in saved[:3]:
        any_store.delete(m.key)
    kept = {blob_key(c.blob) for f in saved[3].files for c in f.chunks}
    # Within the grace period nothing goes.
    young = any_store.gc(grace_seconds=3600)
    assert young.blobs_deleted == 0 and young.blobs_young == len(before - kept)
    dry = any_store.gc(grace_seconds=0, dry_run=True)
    assert dry.blobs_deleted == len(before - kept) and _blob_keys(any_store) == before
    assert dry.bytes_reclaimed == 3 * 2 * CHUNK
    report = any_store.gc(grace_seconds=0)
    assert _blob_keys(any_store) == kept
    assert report.bytes_reclaimed == 3 * 2 * CHUNK and report.manifests == 1
    dest = tmp_path / "out"
    any_store.load(any_store.read(saved[3].key), str(dest))
    assert (dest / "w.bin").read_bytes() == rand(2 * CHUNK, 103)


def test_gc_refuses_an_empty_root_and_stops_on_an_unreadable_manifest(store, tmp_path):
    store.storage.put_bytes(blob_key("ab" * 32), b"orphan")
    with pytest.raises(CheckpointConfigError, match="holds no checkpoint manifest"):
        store.gc(grace_seconds=0)
    assert store.gc(grace_seconds=0, force=True).blobs_deleted == 1
    saved = _save_series(store, tmp_path, 2)
    store.delete(saved[0].key)
    store.storage.put_bytes(saved[1].key, b"{garbage")
    before = _blob_keys(store)
    with pytest.raises(ManifestError, match="Garbage collection stopped before deleting"):
        store.gc(grace_seconds=0)
    assert _blob_keys(store) == before


def test_a_blob_collected_after_pruning_is_uploaded_again_when_reused(any_store, tmp_path):
    """The process trusts blobs it stored before; GC may have removed them since."""
    src = tmp_path / "src"
    x, y = rand(3 * CHUNK, 1), rand(3 * CHUNK, 2)
    write_tree(src, {"w.bin": x})
    first = any_store.save(str(src), make_scope())
    write_tree(src, {"w.bin": y})
    any_store.save(str(src), make_scope())
    any_store.delete(first.key)
    assert any_store.gc(grace_seconds=0).blobs_deleted == 3  # x's chunks are gone
    write_tree(src, {"w.bin": x})
    again = any_store.save(str(src), make_scope())
    assert again.stats["bytes_uploaded"] == 3 * CHUNK
    dest = tmp_path / "out"
    any_store.load(any_store.read(again.key), str(dest))
    assert (dest / "w.bin").read_bytes() == x


def test_gc_concurrent_with_saves_and_pruning_never_breaks_a_checkpoint(tmp_path):
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
        LocalStorage,
    )

    # A short lease: the saver's session rotates every 0.5 s, so what it uploaded before
    # becomes collectable once unreferenced (a live lease keeps what was stored since it began).
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options(), lease_seconds=1)
    reader = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    stop = threading.Event()
    errors: list = []
    reports: list = []

    def collect():
        try:
            while not stop.is_set():
                reports.append(reader.gc(grace_seconds=1.5))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    src = tmp_path / "src"
    write_tree(src, {"big.bin": rand(2 * CHUNK, 999)})
    committed = [store.save(str(src), make_scope(), metadata={"i": -1})]
    gc_thread = threading.Thread(target=collect)
    gc_thread.start()
    deadline = time.time() + 4
    i = 0
    try:
        while time.time() < deadline:
            write_tree(
                src,
                {"big.bin": rand(2 * CHUNK, 1000 + i), "small.txt": b"%d" % i, "same.bin": b"s"},
            )
            committed.append(store.save(str(src), make_scope(), metadata={"i": i}))
            headers = store.headers(make_scope().task_prefix())
            store.prune(headers, build(keep_last=3), group_of=lambda h: "g")
            i += 1
    finally:
        stop.set()
        gc_thread.join()
    assert not errors, errors
    assert sum(r.blobs_deleted for r in reports) > 0  # GC did reclaim while we saved
    survivors = store.headers(make_scope().task_prefix())
    assert len(survivors) == 3 and i > 10
    for h in survivors:  # every committed checkpoint still there loads and verifies
        n = store.read(h.key).metadata["i"]
        dest = tmp_path / ("out%d" % n)
        store.load(store.read(h.key), str(dest))
        assert (dest / "big.bin").read_bytes() == rand(2 * CHUNK, 1000 + n)
        assert (dest / "small.txt").read_bytes() == b"%d" % n


def test_usage_counts_logical_and_physical_bytes(store, tmp_path):
    src = tmp_path / "src"
    shared = rand(4 * CHUNK, 7)
    for i in range(3):
        write_tree(src, {"shared.bin": shared, "own.bin": rand(CHUNK, 50 + i)})
        store.save(str(src), make_scope(run=str(100 + i)))
    other = write_tree(tmp_path / "other", {"other.bin": rand(CHUNK, 99)})
    store.save(str(other), make_scope(step="eval"))
    u = store.usage(store.headers("manifests/"), by="step")
    rows = {r.group: r for r in u.rows}
    assert rows["TrainFlow/train"].checkpoints == 3
    assert rows["TrainFlow/train"].logical_bytes == 3 * 5 * CHUNK
    assert rows["TrainFlow/train"].physical_bytes == 4 * CHUNK + 3 * CHUNK  # shared once
    assert rows["TrainFlow/eval"].physical_bytes == CHUNK
    assert u.total.physical_bytes == 8 * CHUNK == u.stored_bytes
    by_run = {r.group for r in store.usage(store.headers("manifests/"), by="run").rows}
    assert by_run == {"TrainFlow/100", "TrainFlow/101", "TrainFlow/102"}


def test_a_missing_blob_is_never_loaded_silently(store, tmp_path):
    saved = _save_series(store, tmp_path, 1)
    store.storage.delete(blob_key(saved[0].files[0].chunks[0].blob))
    with pytest.raises(CheckpointIncomplete, match="is missing"):
        store.load(store.read(saved[0].key), str(tmp_path / "out"))


def test_an_unchanged_resave_checks_its_previous_checkpoint_not_every_blob(tmp_path):
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import (
        MemoryStorage,
    )

    class Counting(MemoryStorage):
        checked: list = []

        def _exists(self, key):
            self.checked.append(key)
            return super()._exists(key)

    storage = Counting()
    store = CheckpointStore(storage, options())
    src = write_tree(tmp_path / "src", {"w.bin": rand(6 * CHUNK, 5)})
    first = store.save(str(src), make_scope())
    storage.checked.clear()
    store.save(str(src), make_scope())
    # One existence check (one blob of the previous checkpoint vouches for its 6 blobs: the
    # writer's lease keeps GC away from them, so only a wiped store could have lost them).
    assert storage.checked == [blob_key(min(c.blob for f in first.files for c in f.chunks))]
    store.delete(first.key)
    storage.checked.clear()
    store.save(str(src), make_scope())  # the voucher is newest save now, which exists
    assert len(storage.checked) == 1
