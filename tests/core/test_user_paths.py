"""Directories at paths a user gave (``temp_dir_root=``, a load's ``path=``): whatever is wrong
with the path (a file, a file above it, ``/proc``, no permission), every entry point fails with
one :class:`CheckpointConfigError` naming the argument, the path and the OS's reason, never a
raw ``OSError`` traceback (Metaflow's "Internal error").  Run as ``nobody``
(``tests/unprivileged.py``) so "no permission" means the same under root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
from unprivileged import run_unprivileged, world_tmpdir

from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.attributes import (
    check_path_attributes,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import LoadedModels
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

from .helpers import make_scope, options, write_tree

SETTINGS = TaskSettings(async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0)


# ------------------------------------------------------------------ the entry points
def _task_temp_dir_root(path: str, work: str) -> None:
    """@checkpoint(temp_dir_root=path): the task's start."""
    store = CheckpointStore(LocalStorage(os.path.join(work, "store")), options())
    session = TaskSession.start(
        store,
        make_scope(),
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root=path,
        settings=SETTINGS,
        log=lambda m: None,
    )
    session.end()  # not reached


def _model_temp_dir_root(path: str, work: str) -> None:
    """@model(temp_dir_root=path): where a load=[...] entry goes."""
    LoadedModels(path).directory("clf")


def _hub_temp_dir_root(path: str, work: str) -> None:
    """@huggingface_hub(temp_dir_root=path) (the LoadedModels the Hub runtime makes)."""
    LoadedModels(path, prefix="metaflow_hf_", owner="@huggingface_hub").directory("acme/tiny")


def _model_load_path(path: str, work: str) -> None:
    """current.model.load(ref, path=path) and @model(load=[(name, path)])."""
    LoadedModels().directory("clf", path)


def _checkpoint_load_path(path: str, work: str) -> None:
    """current.checkpoint.load(ref, path), Checkpoint().load(ref, path): the one load routine."""
    src = Path(work, "src")
    write_tree(src, {"w.bin": b"weights"})
    store = CheckpointStore(LocalStorage(os.path.join(work, "store")), options())
    manifest = store.save(str(src), make_scope())
    loading.load(store, manifest, path, existing=loading.MERGE)


def _client_temp_dir_root(path: str, work: str) -> None:
    """Checkpoint(temp_dir_root=path, init_dir=True) in a notebook."""
    from metaflow import Checkpoint

    Checkpoint(path, init_dir=True)


ENTRIES: dict[str, tuple[Callable[[str, str], None], str]] = {
    "@checkpoint(temp_dir_root=)": (
        _task_temp_dir_root,
        "Step 'train': @checkpoint(temp_dir_root=",
    ),
    "@model(temp_dir_root=)": (_model_temp_dir_root, "@model(temp_dir_root="),
    "@huggingface_hub(temp_dir_root=)": (_hub_temp_dir_root, "@huggingface_hub(temp_dir_root="),
    "current.model.load(path=)": (_model_load_path, "Loading 'clf' (path="),
    "current.checkpoint.load(path=)": (_checkpoint_load_path, "Cannot load into "),
    "Checkpoint(temp_dir_root=)": (_client_temp_dir_root, "Checkpoint(temp_dir_root="),
}


def _bad_path(kind: str, base: str) -> tuple[str, str]:
    """A path of ``kind`` under ``base`` and the reason the error must give."""
    if kind == "a file":
        Path(base, "file").write_text("x")
        return os.path.join(base, "file"), "it is a file, not a directory"
    if kind == "below a file":
        Path(base, "file").write_text("x")
        return os.path.join(base, "file", "sub", "dir"), "a parent of it is a file"
    if kind == "under /proc":
        return "/proc/mfckpt-nope/dir", "No such file or directory"
    assert kind == "unwritable"
    locked = os.path.join(base, "locked")
    os.mkdir(locked, 0o555)
    return os.path.join(locked, "dir"), "Permission denied"


def _attempt(entry: str, kind: str, base: str) -> tuple[str, str, str]:
    """Run ``entry`` on a bad path of ``kind``: (error type, message, path) (picklable: run
    in the unprivileged child)."""
    path, _ = _bad_path(kind, base)
    work = os.path.join(base, "work")
    os.makedirs(work, exist_ok=True)
    try:
        ENTRIES[entry][0](path, work)
    except Exception as exc:  # noqa: BLE001 - the test is what is raised
        return type(exc).__name__, str(exc), path
    return "nothing raised", "", path


KINDS = ["a file", "below a file", "under /proc", "unwritable"]
#: Every entry point with every kind of bad path, except a file as a load's ``path=``: a load
#: refuses a file as its target before any read (``loading.check_target``, proved by
#: tests/core/test_loading.py::test_a_file_in_place_of_the_directory_is_refused), so that pair
#: never reaches the directory code tested here.
CASES = [
    pytest.param(entry, kind, id="%s-%s" % (entry, kind))
    for entry in sorted(ENTRIES)
    for kind in KINDS
    if not (kind == "a file" and entry.endswith(".load(path=)"))
]


@pytest.mark.parametrize(("entry", "kind"), CASES)
def test_a_bad_user_path_is_one_config_error_naming_the_argument_path_and_reason(entry, kind):
    with world_tmpdir() as base:
        error, message, path = run_unprivileged(_attempt, entry, kind, base)
        _, reason = _bad_path(kind, base) if kind != "unwritable" else (None, "Permission denied")
    assert error == CheckpointConfigError.__name__, (error, message)
    assert ENTRIES[entry][1] in message, message
    assert path in message or os.path.dirname(path) in message, message
    assert reason in message, message


@pytest.mark.parametrize("decorator", ["checkpoint", "model", "huggingface_hub"])
def test_a_temp_dir_root_that_is_a_file_is_refused_at_step_init(tmp_path, decorator):
    """Before any task runs (``step_init``), naming the step, the decorator and the path;
    nothing is created."""
    file = tmp_path / "file"
    file.write_text("x")
    attributes = {"temp_dir_root": str(file), "root": None}
    with pytest.raises(CheckpointConfigError) as info:
        check_path_attributes(decorator, attributes, "train")
    assert str(info.value) == (
        "Step 'train': @%s(temp_dir_root=%r): cannot use %s as a directory: it is a file, not a "
        "directory." % (decorator, str(file), file)
    )
    # A directory that does not exist yet is fine: the task creates it.
    check_path_attributes(decorator, {"temp_dir_root": str(tmp_path / "new"), "root": None}, "t")
    assert not (tmp_path / "new").exists()
