"""The task's metrics log (core/metrics_log.py): every save of a task's rank 0 is recorded
outside ``manifests/``, so retention, listings and GC never prune it, and writing it never fails
a save.  Real local stores and the task runtime a step uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import layout, metrics_log
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import build
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build_runtime
from metaflow_extensions.checkpointing.plugins.checkpointing.task.ranks import Ranks

from .helpers import make_scope, options, write_tree


def _store(root: Path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(str(root)), options())


def _runtime(root: Path, tmp_path: Path, scope, log=None, ranks=None, store=None, **retention):
    directory = tmp_path / ("dir-%d-%d" % (scope.attempt, len(list(tmp_path.iterdir()))))
    directory.mkdir()
    return build_runtime(
        store if store is not None else _store(root),
        scope,
        str(directory),
        log=log if log is not None else (lambda m: None),
        retention=build(**retention),
        ranks=ranks,
    )


def _save(rt, i: int, **metadata):
    (Path(rt.directory) / "state.txt").write_text("state %d" % i)
    return rt.save(metadata=metadata)


def test_every_save_is_logged_though_keep_last_prunes_all_but_three(tmp_path):
    root = tmp_path / "store"
    scope = make_scope()
    rt = _runtime(root, tmp_path, scope, keep_last=3, keep_best="loss:min")
    losses = [10.0 / (i + 1) for i in range(12)]
    saved = [_save(rt, i, loss=loss, step=i, tag="x", ok=True) for i, loss in enumerate(losses)]

    store = _store(root)
    listed = {h.key for h in store.headers(scope.task_prefix())}
    assert len(listed) <= 4  # keep_last=3 plus the best
    entries = metrics_log.read(store.storage, scope.task_prefix())
    assert [e.key for e in entries] == [r.key for r in saved]  # every save, oldest first
    assert [e.metrics for e in entries] == [{"loss": v, "step": i} for i, v in enumerate(losses)]
    assert {e.best for e in entries} == {(("loss", "min"),)}
    assert [e.id for e in entries] == [r.key.rsplit("-", 2)[-2] for r in saved]
    assert all(e.attempt == 0 and e.latest and e.name == "mfchckpt" for e in entries)
    # Beside the checkpoints, never one of them: listings see only the manifests.
    assert all(k.startswith("manifests/") for k in listed)
    assert {h.key for h in store.headers(layout.MANIFESTS_PREFIX)} == listed


def test_a_retry_s_saves_follow_the_first_attempt_s(tmp_path):
    root = tmp_path / "store"
    first = _runtime(root, tmp_path, make_scope(attempt=0), keep_last=1)
    a = [_save(first, i, loss=float(4 - i)) for i in range(3)]
    second = _runtime(root, tmp_path, make_scope(attempt=1), keep_last=1)
    b = [_save(second, i, loss=float(1 - i / 10)) for i in range(2)]
    entries = metrics_log.read(_store(root).storage, make_scope().task_prefix())
    assert [e.key for e in entries] == [r.key for r in a + b]
    assert [e.attempt for e in entries] == [0, 0, 0, 1, 1]


def test_a_log_that_cannot_be_written_warns_once_and_every_save_still_commits(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / layout.METRICS).write_text("a file where the log's directory would go")
    lines: list[str] = []
    scope = make_scope()
    rt = _runtime(root, tmp_path, scope, log=lines.append)
    refs = [_save(rt, i, loss=float(i)) for i in range(3)]

    store = _store(root)
    assert [store.read(r.key).metadata["loss"] for r in refs] == [0.0, 1.0, 2.0]
    warnings = [m for m in lines if "metrics log" in m]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith("[@checkpoint] Warning: could not add checkpoint")
    assert refs[0].key in warnings[0] and "the checkpoint is committed" in warnings[0]
    # the real cause, not "no object at": a file stands where the log's directory would go
    assert "NotADirectoryError" in warnings[0] and "no object at" not in warnings[0], warnings


def test_only_rank_0_logs_in_a_gang(tmp_path):
    root = tmp_path / "store"
    scope = make_scope()
    rank0 = _runtime(root, tmp_path, scope, ranks=Ranks.of_step(0, 2, gang=True))
    rank1 = _runtime(root, tmp_path, scope, ranks=Ranks.of_step(1, 2, gang=True))
    mine = _save(rank0, 0, loss=1.0)
    _save(rank1, 0, loss=2.0)
    entries = metrics_log.read(_store(root).storage, scope.task_prefix())
    assert [e.key for e in entries] == [mine.key]


def test_gc_keeps_the_log_of_pruned_checkpoints(tmp_path):
    root = tmp_path / "store"
    scope = make_scope()
    store = _store(root)
    rt = _runtime(root, tmp_path, scope, store=store, keep_last=1)
    for i in range(4):
        _save(rt, i, loss=float(i))
    report = store.gc(grace_seconds=0)  # ends the writer's lease first
    assert report.blobs_deleted >= 3  # the pruned checkpoints' state files
    entries = metrics_log.read(store.storage, scope.task_prefix())
    assert [e.metrics["loss"] for e in entries] == [0.0, 1.0, 2.0, 3.0]


def test_gc_removes_the_log_of_a_task_once_none_of_its_checkpoints_is_left(tmp_path):
    root = tmp_path / "store"
    store = _store(root)
    gone, alive = make_scope(task="1"), make_scope(task="2")
    rt_gone = _runtime(root, tmp_path, gone, store=store)
    rt_alive = _runtime(root, tmp_path, alive, store=store, keep_last=1)
    deleted = [_save(rt_gone, i, loss=float(i)) for i in range(3)]
    for i in range(3):
        _save(rt_alive, i, loss=float(i))
    for r in deleted:
        store.delete(r.key)

    dry = store.gc(grace_seconds=0, dry_run=True)
    assert dry.metrics_deleted == 3
    assert len(metrics_log.read(store.storage, gone.task_prefix())) == 3  # a dry run deletes none
    # Within the grace period a log is kept (its task may be committing its first save).
    assert store.gc(grace_seconds=3600).metrics_deleted == 0
    report = store.gc(grace_seconds=0)
    assert report.metrics_deleted == 3 and report.to_json()["metrics_deleted"] == 3
    assert metrics_log.read(store.storage, gone.task_prefix()) == []
    assert len(metrics_log.read(store.storage, alive.task_prefix())) == 3  # 2 of 3 pruned


def test_a_named_checkpoint_outside_a_task_is_not_logged(tmp_path):
    store = _store(tmp_path / "store")
    src = write_tree(tmp_path / "src", {"w.bin": b"weights"})
    manifest = store.save(str(src), library_scope("resnet"), name="resnet", metadata={"a": 1})
    assert metrics_log.record(store.storage, manifest) is None
    assert store.storage.list(layout.METRICS + "/") == []


def test_only_numbers_and_nulls_are_kept():
    fields = metrics_log.numeric_fields(
        {"loss": 0.5, "step": 3, "ok": True, "tag": "a", "nested": {"x": 1}, "nan": None}
    )
    assert fields == {"loss": 0.5, "step": 3, "nan": None}
    many = metrics_log.numeric_fields({"f%d" % i: i for i in range(200)})
    assert len(many) == metrics_log.MAX_FIELDS and "f0" in many


def test_entries_that_do_not_parse_are_left_out(tmp_path):
    root = tmp_path / "store"
    scope = make_scope()
    rt = _runtime(root, tmp_path, scope)
    good = _save(rt, 0, loss=1.0)
    bad = _save(rt, 1, loss=2.0)
    storage = _store(root).storage
    storage.put_bytes(layout.metrics_key(bad.key), b"{not json")
    storage.put_bytes(layout.metrics_key(scope.task_prefix()) + "stray.json", b"{}")
    other = json.dumps({"format": "something-else/9", "metrics": {"loss": 3.0}}).encode()
    storage.put_bytes(layout.metrics_key(scope.task_prefix()) + "1-0-1-L-abc-x.json", other)
    entries = metrics_log.read(storage, scope.task_prefix())
    assert [e.key for e in entries] == [good.key]


@pytest.mark.parametrize("prefix", ["manifests/ns/F/s/_/1/2/"])
def test_the_log_key_mirrors_the_manifest_key(prefix):
    key = prefix + "0000000000001-0-000001-L-abc-mfchckpt.json"
    assert (
        layout.metrics_key(key) == "metrics/ns/F/s/_/1/2/0000000000001-0-000001-L-abc-mfchckpt.json"
    )
    assert layout.metrics_manifest(layout.metrics_key(key)) == key


@pytest.mark.s3
def test_the_log_on_s3_keeps_every_save_and_the_card_reads_it_from_a_reference(s3_env, tmp_path):
    from metaflow_extensions.checkpointing.plugins.cards.checkpoint_card.card import read_log
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        storage_for_url,
    )

    url = "s3://%s/ckpt" % s3_env["new_bucket"]()
    store = CheckpointStore(storage_for_url(url), options())
    scope = make_scope()
    rt = _runtime(None, tmp_path, scope, store=store, keep_last=1)
    saved = [_save(rt, i, loss=1.0 / (i + 1)) for i in range(5)]
    (kept,) = rt.list()
    entries, error = read_log([kept])  # as the card does: the store named by the reference
    assert error is None
    assert [e.key for e in entries] == [r.key for r in saved]
    assert [e.metrics["loss"] for e in entries] == [1.0 / (i + 1) for i in range(5)]
