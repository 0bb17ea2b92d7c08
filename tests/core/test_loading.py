"""The one load routine (``core/loading.py``) in its three modes, and references as plain
values (``common/access.py``): what ``Checkpoint().load``, ``current.checkpoint.load`` and
``ref.load``/``ref.open``/``ref.files`` rely on, on real local stores."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    CheckpointReference,
    reference_of,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointIncomplete,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, write_tree

TREE = {"a.txt": b"alpha", "sub/b.bin": b"beta" * 100, "empty": None}


@pytest.fixture
def saved(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", TREE)
    return store, store.save(str(src), make_scope())


def names(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out += [os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames]
    return sorted(out)


LOADED = ["a.txt", "empty", "sub", "sub/b.bin"]


def lose_data(store: CheckpointStore, m) -> None:
    """Delete everything but the manifest: its data is gone (a load fails verifying it)."""
    for o in store.storage.list():
        if o.key != m.key:
            store.storage.delete(o.key)


@pytest.mark.parametrize("existing", [loading.REFUSE, loading.MERGE, loading.REPLACE])
def test_a_new_directory_appears_complete_and_nothing_else_beside_it(saved, tmp_path, existing):
    store, m = saved
    target = tmp_path / "out" / "model"
    assert loading.load(store, m, str(target), existing=existing) == str(target)
    assert names(target) == LOADED
    assert os.listdir(tmp_path / "out") == ["model"]  # no staging directory left


def test_a_failed_load_into_a_new_directory_creates_nothing(saved, tmp_path):
    store, m = saved
    lose_data(store, m)
    with pytest.raises(CheckpointIncomplete):
        loading.load(store, m, str(tmp_path / "out" / "model"))
    assert os.listdir(tmp_path / "out") == []


def test_refuse_mode_refuses_a_non_empty_directory_before_reading(saved, tmp_path):
    dest = write_tree(tmp_path / "dest", {"mine.txt": b"x"})
    with pytest.raises(CheckpointConfigError, match="the directory is not empty"):
        loading.check_target(str(dest), loading.REFUSE)
    store, m = saved
    with pytest.raises(CheckpointConfigError, match="use force=True"):
        loading.load(store, m, str(dest))
    assert names(dest) == ["mine.txt"]
    # An empty directory is fine.
    (tmp_path / "empty").mkdir()
    loading.load(store, m, str(tmp_path / "empty"))
    assert names(tmp_path / "empty") == LOADED


def test_merge_mode_replaces_same_named_files_and_keeps_others(saved, tmp_path):
    store, m = saved
    dest = write_tree(tmp_path / "dest", {"a.txt": b"old", "mine.txt": b"keep"})
    loading.load(store, m, str(dest), existing=loading.MERGE)
    assert names(dest) == sorted(LOADED + ["mine.txt"])
    assert (dest / "a.txt").read_bytes() == b"alpha"
    assert (dest / "mine.txt").read_bytes() == b"keep"


def test_replace_mode_leaves_exactly_the_checkpoint(saved, tmp_path):
    """The managed directory (``current.checkpoint.load(ref)``) holds exactly the checkpoint."""
    store, m = saved
    dest = write_tree(tmp_path / "task", {"a.txt": b"old", "stale/x": b"x", "mine.txt": b"y"})
    loading.load(store, m, str(dest), existing=loading.REPLACE)
    assert names(dest) == LOADED
    assert sorted(os.listdir(tmp_path)) == sorted(["src", "store", "task"])  # no staging left


def test_a_failed_replace_leaves_the_directory_as_it_was(saved, tmp_path):
    store, m = saved
    dest = write_tree(tmp_path / "task", {"a.txt": b"old", "mine.txt": b"y"})
    lose_data(store, m)
    with pytest.raises(CheckpointIncomplete):
        loading.load(store, m, str(dest), existing=loading.REPLACE)
    assert names(dest) == ["a.txt", "mine.txt"]
    assert (dest / "a.txt").read_bytes() == b"old"


@pytest.mark.parametrize("existing", [loading.REFUSE, loading.MERGE, loading.REPLACE])
def test_a_file_in_place_of_the_directory_is_refused(saved, tmp_path, existing):
    store, m = saved
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(CheckpointConfigError, match="it is a file, not a directory"):
        loading.load(store, m, str(tmp_path / "f"), existing=existing)
    assert (tmp_path / "f").read_bytes() == b"x"


# ------------------------------------------------------------------------------ references
def test_a_reference_reads_its_own_store_as_a_plain_value(saved, tmp_path, monkeypatch):
    """``ref.files``/``ref.open``/``ref.load`` read the store the reference names, whatever
    the process's settings (a reference pickled into another run or a notebook)."""
    store, m = saved
    ref = CheckpointReference(reference_of(store, m))  # as unpickled: a plain dict subclass
    monkeypatch.setenv("METAFLOW_CHECKPOINT_ROOT", str(tmp_path / "elsewhere"))
    assert ref.files == [
        {"path": "a.txt", "size": 5},
        {"path": "sub/b.bin", "size": 400},
    ]
    with ref.open("sub/b.bin") as f:
        assert f.read() == b"beta" * 100
    assert ref.load(str(tmp_path / "out")) == str(tmp_path / "out")
    assert names(tmp_path / "out") == LOADED
    with pytest.raises(CheckpointConfigError, match="the directory is not empty"):
        ref.load(str(tmp_path / "out"))


def test_a_reference_without_its_root_says_so(saved):
    store, m = saved
    ref = CheckpointReference(key=m.key)
    with pytest.raises(CheckpointConfigError, match="has no 'root'"):
        ref.files  # noqa: B018


# ------------------------------------------------------------------------------ targets as spelled
# A user's target directory reaches core/loading.py through Checkpoint().load (client) and
# current.checkpoint.load (a task's runtime, built as the task builds it): both must treat it
# alike.  Each loader takes (store, manifest, path) and returns what load() returned.
def _client_load(store: CheckpointStore, m, path):
    from metaflow import Checkpoint

    return Checkpoint(root=store.url).load(m.key, path)


def _task_load(store: CheckpointStore, m, path):
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (
        build_runtime,
    )

    directory = os.path.join(store.url, os.pardir, "task-dir")
    os.makedirs(directory, exist_ok=True)
    runtime = build_runtime(store, make_scope(), directory, log=lambda msg: None)
    return runtime.load(m.key, path)


LOADERS = {"client": _client_load, "task": _task_load}


@pytest.fixture(params=sorted(LOADERS))
def loader(request):
    return LOADERS[request.param]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, 0o027], ids=oct)
def test_a_new_directory_gets_the_mode_the_umask_gives(saved, tmp_path, loader, umask):
    """As ``os.makedirs`` would create it (was: 0o700 whatever the umask, from mkdtemp)."""
    store, m = saved
    target = tmp_path / "out" / "model"
    previous = os.umask(umask)
    try:
        loader(store, m, str(target))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~umask
    assert names(target) == LOADED


def test_a_dangling_symlink_target_is_refused_naming_it(saved, tmp_path, loader):
    """A link to a directory that does not exist: a config error naming both, nothing written
    (was: a raw NotADirectoryError from the rename, after the download)."""
    store, m = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "model").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CheckpointConfigError) as err:
        loader(store, m, str(out / "model"))
    assert "%s: it is a symbolic link to %s" % (out / "model", tmp_path / "nowhere") in str(
        err.value
    )
    assert os.listdir(out) == ["model"] and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("spell", [os.fsencode, Path, str], ids=["bytes", "pathlib", "str"])
def test_a_target_path_of_any_os_type_loads(saved, tmp_path, loader, spell):
    """str, bytes (was: a raw TypeError from a regex) and os.PathLike load alike; the
    returned path is a str."""
    store, m = saved
    target = tmp_path / "out" / "model"
    assert loader(store, m, spell(str(target))) == str(target)
    assert names(target) == LOADED


@pytest.mark.parametrize("bad", [3, 2.5, ["a"]], ids=["int", "float", "list"])
def test_a_target_that_is_no_path_is_a_config_error(saved, tmp_path, loader, bad):
    store, m = saved
    with pytest.raises(CheckpointConfigError, match="a target directory is a path"):
        loader(store, m, bad)
