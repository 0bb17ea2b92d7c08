"""Damaged or newer-format checkpoints never block the store.

One truncated manifest, one written by a newer release, or a malformed summary index (a hint)
must not break listing the others, pruning, a ``save()`` with retention, or deleting: the
entry is listed flagged ``damaged`` with the reason, retention keeps it without counting it,
``delete`` removes it by key, and loading it still raises the ``ManifestError``.  Each test runs
on the memory and the local store; the last one shows what a user sees through
``Checkpoint().list()`` and ``metaflow checkpoint list`` / ``delete``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import flow_environment
from integration.flowrun import subprocess_env

from metaflow_extensions.checkpointing.plugins.checkpointing.core import retention
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    step_index_key,
    task_summary_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    Manifest,
    now_ms,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import (
    Scope,
    library_scope,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointNotFound,
    ManifestError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build_runtime

from .helpers import make_scope, options, tiny

T0 = now_ms() - 600_000  # ten minutes ago: saves made by the tests come later


def _write_damaged(store: CheckpointStore, scope: Scope, name: str, created_ms: int) -> dict:
    """A truncated manifest and one of a newer format, dated ``created_ms`` and 1 ms later;
    returns their keys by kind."""
    truncated = Manifest("%016x" % created_ms, name, scope, True, created_ms, 0, {"x": 1}, [])
    store.storage.put_bytes(truncated.key, truncated.dumps()[:40])
    newer = Manifest("%016x" % (created_ms + 1), name, scope, True, created_ms + 1, 0, {}, [])
    body = dict(newer.to_json(), format="metaflow-checkpointing/2", new_field=[1, 2])
    store.storage.put_bytes(newer.key, json.dumps(body).encode())
    return {"truncated": truncated.key, "newer": newer.key}


def _populate(
    store: CheckpointStore,
    tmp_path: Path,
    scope: Scope,
    name: str = "mfchckpt",
    damaged: bool = True,
):
    """Three good checkpoints of ``scope`` (metadata ``i``), then the two damaged ones, newer."""
    good = [
        store.save(
            str(tiny(tmp_path)), scope, name=name, metadata={"i": i}, created_ms=T0 + i, seq=i
        )
        for i in range(3)
    ]
    return [m.key for m in good], _write_damaged(store, scope, name, T0 + 10) if damaged else {}


def _check_damaged(summary: dict, kind: str) -> None:
    assert summary["damaged"] is True
    if kind == "truncated":
        assert "is unreadable or invalid" in summary["error"]
    else:
        assert "written by a newer release" in summary["error"]
        assert "Upgrade metaflow-checkpointing" in summary["error"]


# ------------------------------------------------------------------------------ listing
def test_listing_shows_damaged_entries_beside_the_good_ones(any_store, tmp_path):
    store = any_store
    good, bad = _populate(store, tmp_path, make_scope())
    headers = store.headers(make_scope().task_prefix())
    assert [h.key for h in headers] == [bad["newer"], bad["truncated"], *reversed(good)]
    for _ in range(2):  # the second listing reads the summary index written by the first
        summaries = store.summaries(headers)
        assert [summaries[k]["metadata"] for k in good] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert not any(summaries[k].get("damaged") for k in good)
        for kind, key in bad.items():
            _check_damaged(summaries[key], kind)
    index = json.loads(store.storage.get_bytes(step_index_key(make_scope().step_prefix())))
    assert set(index["entries"]) == set(good)  # damaged entries are never recorded


def test_loading_a_damaged_checkpoint_still_raises(any_store, tmp_path):
    store = any_store
    _, bad = _populate(store, tmp_path, make_scope())
    with pytest.raises(ManifestError, match="unreadable or invalid"):
        store.read(bad["truncated"])
    with pytest.raises(ManifestError, match="newer release"):
        store.read(bad["newer"])


def test_a_manifest_damaged_after_it_was_indexed_is_listed_from_its_index_until_load_or_verify(
    any_store, tmp_path
):
    """Listings read the summary index, so a manifest damaged after it was indexed is still
    listed as it was (not ``damaged``); loading it and verify always read the manifest and
    detect it (docs/concepts.md, "Damaged and newer-format checkpoints")."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import verify

    store = any_store
    good, _ = _populate(store, tmp_path, make_scope(), damaged=False)
    headers = store.headers(make_scope().task_prefix())
    store.summaries(headers)  # the first listing writes the summary index
    store.storage.put_bytes(good[1], store.storage.get_bytes(good[1])[:40])  # truncated later
    summary = store.summaries(store.headers(make_scope().task_prefix()))[good[1]]
    assert summary["metadata"] == {"i": 1} and not summary.get("damaged")  # from the index
    with pytest.raises(ManifestError, match="unreadable or invalid"):
        store.read(good[1])
    report = verify.verify(store.storage, None, options=store.options)
    assert [d.key for d in report.damaged] == [good[1]] and not report.ok


# A summary index is a hint: each of these is ignored, and the manifests are read instead.
MALFORMED_BODIES = {
    "not json": b"{not json",
    "not utf-8": b"\xff\xfe\x00",
    "a list": b"[]",
    "entries a list": b'{"format": "metaflow-checkpointing-summaries/1", "entries": []}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
}
MALFORMED_ENTRIES = {
    "entry not an object": "entry",
    "metadata a list": {"metadata": [1], "size": 1, "files": 1},
    "size negative": {"metadata": {}, "size": -1, "files": 1},
    "size a string": {"metadata": {}, "size": "12", "files": 1},
    "size a bool": {"metadata": {}, "size": True, "files": 1},
    "size infinite": {"metadata": {}, "size": float("inf"), "files": 1},
    "stats a string": {"metadata": {}, "size": 1, "files": 1, "stats": "fast"},
}


@pytest.mark.parametrize("kind", [*MALFORMED_BODIES, *MALFORMED_ENTRIES])
def test_malformed_summary_index_is_ignored(any_store, tmp_path, kind):
    store = any_store
    good, _ = _populate(store, tmp_path, make_scope(), damaged=False)
    headers = store.headers(make_scope().task_prefix())
    truth = store.summaries(headers)
    if kind in MALFORMED_BODIES:
        data = MALFORMED_BODIES[kind]
    else:
        entries = {k: MALFORMED_ENTRIES[kind] for k in good}
        data = json.dumps({"format": "metaflow-checkpointing-summaries/1", "entries": entries})
        data = data.encode()
    store.storage.put_bytes(step_index_key(make_scope().step_prefix()), data)
    store.storage.put_bytes(task_summary_key(make_scope().task_prefix(), 0), data)
    fresh = CheckpointStore(store.storage, options())  # nothing cached in the process
    assert fresh.summaries(headers) == truth
    assert [truth[k]["metadata"] for k in good] == [{"i": 0}, {"i": 1}, {"i": 2}]


# ------------------------------------------------------------------------------ retention
def test_prune_keeps_damaged_entries_without_counting_them(any_store, tmp_path):
    """keep_last=1 keeps the newest good checkpoint, not one of the two newer damaged ones,
    deletes the other good ones, and keeps (and names) both damaged entries."""
    store = any_store
    good, bad = _populate(store, tmp_path, make_scope())
    headers = store.headers(make_scope().task_prefix())
    policy = retention.build(keep_last=1)
    for dry_run in (True, False):
        [(group, plan)] = store.prune(headers, policy, group_of=lambda h: "g", dry_run=dry_run)
        assert sorted(plan.delete) == sorted(good[:2])
        assert plan.keep[good[2]] and "damaged" not in plan.keep[good[2]]
        for key in bad.values():
            assert plan.keep[key] == ["damaged"]
            assert any(key in w and "neither deletes nor counts" in w for w in plan.warnings)
    remaining = {h.key for h in store.headers(make_scope().task_prefix())}
    assert remaining == {good[2], *bad.values()}


def test_save_with_retention_beside_damaged_entries(any_store, tmp_path):
    """A task's save() with retention commits, prunes its older good checkpoints, keeps the
    damaged ones and says so once; its listing shows them flagged."""
    store = any_store
    scope = make_scope(attempt=1)
    good, bad = _populate(store, tmp_path, scope)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "state.txt").write_text("epoch 4")
    logs: list[str] = []
    runtime = build_runtime(
        store, scope, str(directory), log=logs.append, retention=retention.build(keep_last=1)
    )
    runtime.save(metadata={"i": 3})
    newest = runtime.save(metadata={"i": 4})
    listed = {r.key: r for r in runtime.list()}
    assert set(listed) == set(bad.values()) | {newest.key}  # good ones and the first pruned
    for kind, key in bad.items():
        assert listed[key].damaged is True
        _check_damaged({"damaged": True, "error": listed[key].error}, kind)
    assert listed[newest.key].damaged is False and listed[newest.key].error is None
    warnings = [m for m in logs if "damaged checkpoint" in m]
    assert len(warnings) == 2 and not any("pruning old checkpoints failed" in m for m in logs)


# ------------------------------------------------------------------------------ delete
def test_delete_by_key_does_not_parse(any_store, tmp_path):
    store = any_store
    good, bad = _populate(store, tmp_path, make_scope())
    for key in bad.values():
        store.delete(key)
    assert [h.key for h in store.headers(make_scope().task_prefix())] == good[::-1]
    with pytest.raises(CheckpointNotFound):
        store.delete("manifests/not/a/key.json")


def test_usage_counts_the_good_checkpoints_and_names_the_damaged(any_store, tmp_path):
    """`du` beside damaged entries: the good ones are accounted, the damaged ones listed."""
    store = any_store
    good, bad = _populate(store, tmp_path, make_scope())
    report = store.usage(store.headers(make_scope().task_prefix()), by="step").to_json()
    assert report["total"]["checkpoints"] == len(good)
    assert report["damaged"] == sorted(bad.values())


# ------------------------------------------------------------------------------ what a user sees
def _metaflow(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "metaflow"), "checkpoint", *args],
        env=subprocess_env(env),
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    if proc.stdout.startswith("Metaflow ("):  # `metaflow` prints its version banner first
        proc.stdout = proc.stdout.split("\n", 1)[1].lstrip("\n")
    return proc


def test_client_and_cli_list_and_delete_damaged_named_checkpoints(tmp_path):
    """A user sees damaged versions in Checkpoint().list() (damaged/error) and in
    `metaflow checkpoint list` (a DAMAGED row and a warning with the reason), and deletes them
    by key with the client and the CLI."""
    from metaflow import Checkpoint

    root = tmp_path / "store"
    store = CheckpointStore(LocalStorage(str(root)), options())
    good, bad = _populate(store, tmp_path, library_scope("resnet"), name="resnet")

    refs = Checkpoint(root=str(root)).list(name="resnet")
    assert [r.key for r in refs] == [bad["newer"], bad["truncated"], *reversed(good)]
    assert [r.damaged for r in refs] == [True, True, False, False, False]
    assert "newer release" in refs[0].error and "unreadable or invalid" in refs[1].error
    assert refs[2].error is None and refs[2].metadata == {"i": 2}

    (tmp_path / "home").mkdir()
    env, cwd = flow_environment(tmp_path), tmp_path
    listing = _metaflow(env, cwd, "list", "--named", "--root", str(root), "--keys")
    rows = [line.split() for line in listing.stdout.splitlines() if line.startswith("manifests/")]
    assert [row[0] for row in rows] == [r.key for r in refs]
    assert [row[-1] for row in rows[:2]] == ["below)", "below)"]  # DAMAGED (... see below)
    assert "DAMAGED" in " ".join(rows[0]) and "DAMAGED" not in " ".join(rows[2])
    warnings = [line for line in listing.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 2 and bad["newer"] in warnings[0] and "newer release" in warnings[0]
    as_json = json.loads(
        _metaflow(env, cwd, "list", "--named", "--root", str(root), "--json").stdout
    )
    assert [(r["damaged"], r["error"] is None) for r in as_json] == [
        (True, False),
        (True, False),
        (False, True),
        (False, True),
        (False, True),
    ]

    deleted = _metaflow(env, cwd, "delete", bad["truncated"], "--yes", "--root", str(root))
    assert "Deleted damaged resnet@" in deleted.stdout
    ref = Checkpoint(root=str(root)).delete(bad["newer"])
    assert ref.damaged is True and ref.key == bad["newer"]
    assert [r.key for r in Checkpoint(root=str(root)).list(name="resnet")] == good[::-1]
