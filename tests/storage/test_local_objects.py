"""A local store whose objects were replaced by hand: reads never leave the store or hang.

A blob path that is a symlink (to a FIFO or a file outside the store) or a FIFO itself is not a
stored object: reading it is a clear ``StorageError``, it does not count as present (so the next
save of that content writes a real file over it), and a load fails instead of blocking forever.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

SCOPE = Scope("user:t", "F", "s", "_", "1", "1", 0)


def _saved(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(300_000))
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")))
    m = store.save(str(src), SCOPE)
    blob = m.files[0].chunks[0].blob
    return store, m, src, os.path.join(str(tmp_path / "store"), *blob_key(blob).split("/"))


@pytest.mark.parametrize("kind", ["fifo link", "fifo", "file link"])
def test_a_blob_replaced_by_a_link_or_fifo_is_an_error_not_a_hang(tmp_path, kind):
    store, m, _src, path = _saved(tmp_path)
    os.unlink(path)
    outside = str(tmp_path / "outside")
    if kind == "file link":
        with open(outside, "wb") as f:
            f.write(b"secret outside the store")
        os.symlink(outside, path)
    elif kind == "fifo link":
        os.mkfifo(outside)
        os.symlink(outside, path)
    else:
        os.mkfifo(path)
    # In a child process with a timeout: the bug this guards against blocked forever in open().
    code = (
        "import sys\n"
        "from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import "
        "CheckpointStore\n"
        "from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import "
        "LocalStorage\n"
        "s = CheckpointStore(LocalStorage(sys.argv[1]))\n"
        "s.load(s.read(sys.argv[2]), sys.argv[3])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store"), m.key, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "not a regular file" in proc.stderr
    assert not os.path.exists(tmp_path / "out" / "a")
    with pytest.raises(StorageError, match="not a regular file"):
        store.storage.get_bytes(blob_key(m.files[0].chunks[0].blob))
    assert not store.storage.exists(blob_key(m.files[0].chunks[0].blob))


def test_saving_the_content_again_replaces_a_planted_link_with_the_blob(tmp_path):
    store, m, src, path = _saved(tmp_path)
    os.unlink(path)
    os.symlink(str(tmp_path / "nowhere"), path)
    fresh = CheckpointStore(LocalStorage(str(tmp_path / "store")))  # no known-blob cache
    m2 = fresh.save(str(src), SCOPE)
    assert not os.path.islink(path) and os.path.isfile(path)
    fresh.load(fresh.read(m2.key), str(tmp_path / "out"))
    assert (tmp_path / "out" / "a").read_bytes() == (src / "a").read_bytes()
