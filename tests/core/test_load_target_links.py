"""A load into a directory of the user's that holds a symbolic link where the checkpoint has a
file or a directory, leading out of that directory (or nowhere): a ``CheckpointConfigError``
naming the user's link and what to do, before anything is written (adv41 #7: it was reported
as a damaged manifest).  Links that stay inside the directory are followed or replaced as
before.  Real local stores, real links."""

from __future__ import annotations

import os

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, snapshot, write_tree

TREE = {"w.bin": b"weights", "sub/x.txt": b"x", "empty": None}


@pytest.fixture
def saved(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", TREE)
    (tmp_path / "victim.txt").write_bytes(b"victim")
    (tmp_path / "outdir").mkdir()
    return store, store.save(str(src), make_scope())


#: link name in the target -> where it leads (relative to tmp_path), what the checkpoint has there
OUTWARD = [
    ("w.bin", "victim.txt", "file"),
    ("sub", "outdir", "directory"),
    ("empty", "outdir", "directory"),
    ("w.bin", "nonexistent/q", "file"),  # dangling
    ("sub", "..", "directory"),
]


@pytest.mark.parametrize("existing", [loading.MERGE, loading.REFUSE])
@pytest.mark.parametrize("link, to, kind", OUTWARD)
def test_a_link_out_of_the_target_is_the_users_problem_named_before_any_write(
    saved, tmp_path, link, to, kind, existing
):
    store, m = saved
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(str(tmp_path / to), str(target / link))
    before = snapshot(tmp_path / "outdir"), (tmp_path / "victim.txt").read_bytes()
    listing = sorted(os.listdir(target))
    with pytest.raises(CheckpointConfigError) as err:
        loading.load(store, m, str(target), existing=existing)
    if existing == loading.MERGE:
        message = str(err.value)
        assert str(target / link) in message and "symbolic link" in message
        assert "where the checkpoint has a %s" % kind in message
        assert "Remove or rename the link" in message and "Nothing was changed" in message
    else:
        assert "not empty" in str(err.value)  # refuse: a non-empty directory, as before
    assert (snapshot(tmp_path / "outdir"), (tmp_path / "victim.txt").read_bytes()) == before
    assert sorted(os.listdir(target)) == listing


def test_links_inside_the_target_still_load(saved, tmp_path):
    store, m = saved
    target = tmp_path / "target"
    (target / "real").mkdir(parents=True)
    (target / "other").write_bytes(b"o")
    os.symlink("real", str(target / "sub"))  # a directory link inside: written through
    os.symlink("other", str(target / "w.bin"))  # a file link inside: replaced by the file
    loading.load(store, m, str(target), existing=loading.MERGE)
    assert (target / "real" / "x.txt").read_bytes() == b"x"
    assert not os.path.islink(target / "w.bin") and (target / "w.bin").read_bytes() == b"weights"
    assert (target / "other").read_bytes() == b"o"


def test_load_model_names_the_link_too(saved, tmp_path):
    """The top-level ``load_model`` goes through the same check (a reference-extension call)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
        reference_of,
    )
    from metaflow_extensions.checkpointing.toplevel.models import load_model

    store, m = saved
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(str(tmp_path / "victim.txt"), str(target / "w.bin"))
    with pytest.raises(CheckpointConfigError) as err:
        load_model(reference_of(store, m), str(target))
    assert str(target / "w.bin") in str(err.value)
    assert (tmp_path / "victim.txt").read_bytes() == b"victim"
