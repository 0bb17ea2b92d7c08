"""Every save of a model or named checkpoint is its own version (issue 14 F5).

Two saves of identical content, from two tasks or runs of one namespace, used to return one
version: ``delete_model`` of the first run's model then broke the second run's artifact, and
the second's origin named the first's task.  Now each ``current.model.save`` /
``Checkpoint().save(name=...)`` writes its own manifest with its own origin; the blobs stay
content-addressed, so the bytes are uploaded once.  Deleting one version leaves the other
loadable.
"""

from __future__ import annotations

import metaflow  # noqa: F401, I001  (Metaflow before the package, as in conftest.py)

from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.promotions import publisher_of
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointNotFound
from metaflow_extensions.checkpointing.plugins.checkpointing.fmt import human_size
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import LoadedModels
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import (
    ModelRuntime,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.models import (
    MODELS_ENV,
    ensure_available,
    load_models,
    parse_specs,
)

from .helpers import make_scope, options, rand, snapshot, write_tree


class CountingStorage(MemoryStorage):
    """Memory storage that counts the puts of blobs (what an upload moves)."""

    def __init__(self):
        super().__init__()
        self.blob_puts: list[str] = []

    def put_bytes(self, key, data):
        if key.startswith("blobs/"):
            self.blob_puts.append(key)
        super().put_bytes(key, data)

    def put_file(self, key, local_path):
        if key.startswith("blobs/"):
            self.blob_puts.append(key)
        super().put_file(key, local_path)


def _runtime(store, tmp_path, run: str, step: str) -> ModelRuntime:
    scope = make_scope(run=run, step=step, task="1")
    return ModelRuntime(store, scope, "alice", LoadedModels(str(tmp_path)), log=lambda line: None)


def _tree(tmp_path):
    return write_tree(tmp_path / "model", {"weights.bin": rand(300_000, 1), "config.json": b"{}"})


def test_identical_model_saves_in_two_runs_are_two_versions_sharing_their_bytes(tmp_path):
    storage = CountingStorage()
    store = CheckpointStore(storage, options())
    src = _tree(tmp_path)

    r1 = _runtime(store, tmp_path, "100", "start").save(str(src), label="tokenizer")
    puts_first = len(storage.blob_puts)
    r2 = _runtime(store, tmp_path, "101", "train").save(str(src), label="tokenizer")

    # Two versions, each naming the task that saved it.
    assert r1["version"] != r2["version"] and r1["key"] != r2["key"]
    assert r1["publisher"]["origin"] == "TrainFlow/100/start/1"
    assert r2["publisher"]["origin"] == "TrainFlow/101/train/1"
    # The bytes were uploaded once: the second save wrote no blob, only its manifest.
    assert puts_first > 0 and len(storage.blob_puts) == puts_first
    assert r2["stats"]["bytes_uploaded"] == 0 and not r2["stats"].get("reused")

    # Deleting the first run's model leaves the second run's loadable, byte for byte.
    store.delete(r1["key"])
    try:
        store.read(r1["key"])
        raise AssertionError("the deleted version is still readable")
    except CheckpointNotFound:
        pass
    # Even after garbage collection: the shared blobs are referenced by the second version.
    store.close()  # this writer's lease would keep the blobs anyway: end it, as a task does
    assert store.gc(grace_seconds=0).blobs_deleted == 0
    target = tmp_path / "loaded"
    loading.load(store, store.read(r2["key"]), str(target))
    assert snapshot(target) == snapshot(src)


def test_identical_named_saves_outside_a_task_are_two_versions(tmp_path, monkeypatch):
    import metaflow.client.core
    import metaflow.metaflow_config
    from metaflow import Checkpoint

    # Alice's namespace, restored after the test (Metaflow keeps it in module globals).
    monkeypatch.setattr(metaflow.metaflow_config, "USER", "alice")
    monkeypatch.setattr(metaflow.client.core, "current_namespace", "user:alice")
    root = str(tmp_path / "store")
    src = _tree(tmp_path)
    client = Checkpoint(root=root)
    first = client.save(str(src), name="named")
    second = client.save(str(src), name="named")
    assert first.key != second.key and second.stats["bytes_uploaded"] == 0
    assert [r.key for r in client.list(name="named")] == [second.key, first.key]

    client.delete(first)
    dest = client.load(second, str(tmp_path / "out"))
    assert snapshot(dest) == snapshot(src)
    assert client.get("named").key == second.key  # the name still resolves


def test_launcher_uploads_of_identical_content_in_two_runs_are_two_versions(tmp_path, monkeypatch):
    """``@checkpoint(models=["vocab=./vocab_dir"])``: the launcher of each run uploads the
    directory.  Two runs used to get one version (``reuse_identical``): deleting the first
    run's deleted the second's.  Now each run's upload is its own version, naming its run; the
    second moves no bytes, and after the first is deleted and gc runs the second loads."""
    import metaflow.metaflow_config

    monkeypatch.setattr(metaflow.metaflow_config, "USER", "alice")  # the run's user
    monkeypatch.delenv("METAFLOW_PRODUCTION_TOKEN", raising=False)
    storage = CountingStorage()
    store = CheckpointStore(storage, options())
    src = _tree(tmp_path)
    specs = parse_specs(["vocab=%s" % src], "start")
    for spec in specs:  # load_models exports the paths: restored after the test
        monkeypatch.delenv(spec.env_var, raising=False)
    monkeypatch.delenv(MODELS_ENV, raising=False)

    def versions(store):
        return [h.key for h in store.headers(library_scope("vocab").step_prefix(), name="vocab")]

    lines: list[str] = []
    ensure_available(store, specs, "start", lines.append, origin="ModelsFlow/1")
    puts_first = len(storage.blob_puts)
    ensure_available(store, specs, "start", lines.append, origin="ModelsFlow/2")

    origin = {publisher_of(m.source)["origin"]: m for m in map(store.read, versions(store))}
    assert sorted(origin) == ["ModelsFlow/1", "ModelsFlow/2"]  # two versions, one per run
    first, second = origin["ModelsFlow/1"], origin["ModelsFlow/2"]
    assert puts_first > 0 and len(storage.blob_puts) == puts_first  # bytes uploaded once
    assert second.stats["bytes_uploaded"] == 0 and not second.stats.get("reused")
    assert lines[-1] == "[@checkpoint] Uploaded model 'vocab' version %s (%s, 0 B new)." % (
        second.id,
        human_size(second.size),
    )

    store.delete(first.key)
    store.close()  # end this writer's lease, as the launcher does
    assert store.gc(grace_seconds=0).blobs_deleted == 0
    paths = load_models(store, specs, str(tmp_path / "models"), "user:alice")
    assert snapshot(paths["vocab"]) == snapshot(src)
