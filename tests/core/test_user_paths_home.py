"""A leading ``~`` in a directory a user gives is the home directory, as in a shell, at every
entry point (review r14 R8): before, Python's calls took it literally, so
``@checkpoint(temp_dir_root="~/scratch")`` or ``load(ref, path="~/model")`` created a directory
named ``~`` in the working directory.  HOME points at a fresh directory; the working directory
is another, and must be left without a ``~`` in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.hub import HuggingfaceHub
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import normalize_root
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.attributes import (
    check_path_attributes,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings
from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
    DIRECTORY_ENV,
    TASK_ENV,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import LoadedModels
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import ModelRuntime
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

from .helpers import make_scope, options, write_tree

SETTINGS = TaskSettings(async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """HOME is ``tmp/home``; the working directory ``tmp/cwd`` holds no ``~`` afterwards."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    # TaskSession.start sets these for the task's processes; end() removes them.
    monkeypatch.delenv(TASK_ENV, raising=False)
    monkeypatch.delenv(DIRECTORY_ENV, raising=False)
    yield home
    assert os.listdir(cwd) == [], "a literal '~' directory was created in the cwd"


def _store(tmp: Path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(str(tmp / "store")), options())


def test_checkpoint_temp_dir_root_is_under_home(home, tmp_path):
    """@checkpoint(temp_dir_root="~/scratch"): the task's directory (current.checkpoint
    .directory) and the one its processes get are under HOME."""
    session = TaskSession.start(
        _store(tmp_path),
        make_scope(),
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root="~/scratch",
        settings=SETTINGS,
        log=lambda m: None,
    )
    try:
        directory = session.runtime.directory
        assert Path(directory).parent == home / "scratch"
        assert os.environ[DIRECTORY_ENV] == directory
    finally:
        session.end()


@pytest.mark.parametrize("owner", ["@model", "@huggingface_hub"])
def test_model_and_hub_temp_dir_root_is_under_home(home, tmp_path, owner):
    """@model(temp_dir_root=) and @huggingface_hub(temp_dir_root=): where a load=[...] entry
    goes."""
    if owner == "@model":
        loaded = LoadedModels("~/models")
    else:
        hub = HuggingfaceHub(
            _store(tmp_path),
            namespace="user:tester",
            flow="F",
            step="s",
            pathspec="F/1/s/1",
            user="tester",
            temp_dir_root="~/models",
        )
        loaded = hub._loaded  # the directories @huggingface_hub(load=[...]) hands out
    assert Path(loaded.directory("acme/tiny")).parent == home / "models"


def test_a_loads_path_is_under_home(home, tmp_path):
    """current.checkpoint.load / Checkpoint().load / the CLI's load (one load routine), and
    current.model.load(path=) / @model(load=[(name, path)])."""
    src = tmp_path / "src"
    write_tree(src, {"w.bin": b"weights"})
    store = _store(tmp_path)
    manifest = store.save(str(src), make_scope())
    assert loading.load(store, manifest, "~/target") == str(home / "target")
    assert (home / "target" / "w.bin").read_bytes() == b"weights"
    assert LoadedModels().directory("clf", "~/model") == str(home / "model")
    assert (home / "model").is_dir()


def test_client_temp_dir_root_is_under_home(home):
    """Checkpoint(temp_dir_root="~/nb", init_dir=True) in a notebook."""
    from metaflow import Checkpoint

    client = Checkpoint("~/nb", init_dir=True)
    try:
        assert Path(client.directory).parent == home / "nb"
    finally:
        client.close()


def test_step_init_checks_the_home_path_and_roots_expand(home):
    """A ``~`` temp_dir_root that is a file under HOME is refused at step_init (the check looks
    where the task will); a ``~`` root (``@checkpoint(root=)``, CLI ``--root``,
    METAFLOW_CHECKPOINT_ROOT) is under HOME."""
    (home / "file").write_text("x")
    with pytest.raises(CheckpointConfigError, match="it is a file, not a directory"):
        check_path_attributes("checkpoint", {"temp_dir_root": "~/file", "root": None}, "train")
    check_path_attributes("checkpoint", {"temp_dir_root": "~/new", "root": None}, "train")
    assert normalize_root("~/ckpt") == str(home / "ckpt")


def test_save_sources_are_under_home(home, tmp_path):
    """current.checkpoint.save(path="~/m"), current.model.save("~/m") and, outside a task,
    Checkpoint(root=...).save("~/m", name=...) save HOME/m (review rv3 item 7: they failed
    with "no such file or directory", or saved a literal ``./~/m`` had one existed, while a
    load's ``path="~/m"`` was already HOME/m)."""
    from metaflow import Checkpoint

    write_tree(home / "m", {"w.bin": b"weights in home"})
    store = _store(tmp_path)

    def files(ref, into: str) -> bytes:
        target = loading.load(store, store.read(ref["key"]), str(tmp_path / into))
        return (Path(target) / "w.bin").read_bytes()

    session = TaskSession.start(
        store,
        make_scope(),
        Resolution(None, "first attempt"),
        step_name="train",
        settings=SETTINGS,
        log=lambda m: None,
    )
    try:
        assert files(session.runtime.save(path="~/m", name="ckpt"), "a") == b"weights in home"
    finally:
        session.end()
    model = ModelRuntime(store, make_scope(), "alice", LoadedModels(), log=lambda m: None)
    assert files(model.save("~/m", label="clf"), "b") == b"weights in home"

    client = Checkpoint(root=str(tmp_path / "named"))
    ref = client.save("~/m", name="named")
    assert ref["name"] == "named"
    client.load(ref, str(tmp_path / "c"))
    assert (tmp_path / "c" / "w.bin").read_bytes() == b"weights in home"
