"""``scan.is_small``: the cheap bound that sends a save into a local store through the task's
own thread (ADR 009).  It must never call small what a save would read more of."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scan import is_small, scan

LIMIT = 4096


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 2 * LIMIT), max_size=20))
def test_small_means_a_save_reads_at_most_the_bound(tmp_path_factory, sizes):
    src = tmp_path_factory.mktemp("src")
    for i, size in enumerate(sizes):
        (src / ("f%d" % i)).write_bytes(b"x" * size)
    files, _, _ = scan(str(src))
    read = sum(f.size for f in files)
    assert is_small(str(src), LIMIT) == (read <= LIMIT and len(sizes) <= 16)


def test_a_file_is_small_up_to_the_bound(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * LIMIT)
    (tmp_path / "b").write_bytes(b"x" * (LIMIT + 1))
    assert is_small(str(tmp_path / "a"), LIMIT)
    assert not is_small(str(tmp_path / "b"), LIMIT)


@pytest.mark.parametrize("kind", ["subdirectory", "link to a large file", "missing", "fifo"])
def test_what_a_directory_read_cannot_bound_is_not_small(tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    (src / "state.txt").write_text("epoch 1")
    if kind == "subdirectory":
        (src / "sub").mkdir()  # its content is not looked at: not small, whatever it holds
    elif kind == "link to a large file":
        (tmp_path / "big").write_bytes(b"x" * (LIMIT + 1))
        os.symlink(tmp_path / "big", src / "big")  # a save follows it
    elif kind == "missing":
        src = tmp_path / "nothing"
    else:
        os.mkfifo(src / "pipe")
    assert not is_small(str(src), LIMIT)
