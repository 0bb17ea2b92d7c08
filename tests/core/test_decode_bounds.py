"""A damaged or hostile compressed blob costs a reader no more memory than the manifest expects.

A ``.zst`` object can declare (or hold) far more plain bytes than the blob the manifest
references: every reader (``load``, ``open()``, ``verify --deep``) refuses a frame declaring
more than the manifest needs before decompressing it, bounds its decoder by that length, and
reports an integrity problem; a second fetch does not hold the first one's bytes.  Peak Python
allocation is measured with ``tracemalloc`` (zstandard returns its output as Python bytes).
"""

from __future__ import annotations

import functools
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest
import zstandard

from metaflow_extensions.checkpointing.plugins.checkpointing.core import verify
from metaflow_extensions.checkpointing.plugins.checkpointing.core.download import blob_end
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, write_tree

#: What the bombs expand to: far above what any reader may allocate for a 68 KB blob.
BOMB = 256 << 20
#: Peak allocation a reader may reach on a bomb (blobs are one 64 KiB chunk at most here).
BOUND = 8 << 20
LOG = b"hello world line\n" * 4000


@functools.cache
def _zeros_frame(n: int, declare: bool) -> bytes:
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=declare)
    cobj = cctx.compressobj(size=n if declare else -1)
    block = bytes(1 << 20)
    return b"".join([cobj.compress(block) for _ in range(n >> 20)] + [cobj.flush()])


def _bombs() -> dict[str, Callable[[int], bytes]]:
    return {
        # declares (and holds) far more than the manifest needs
        "declared-bigger": lambda need: _zeros_frame(BOMB, True),
        # declares fewer bytes than the manifest needs (and is not the blob)
        "declared-smaller": lambda need: _zeros_frame(need // 2, True),
        # declares no size at all, holds a bomb
        "no-declared-size": lambda need: _zeros_frame(BOMB, False),
        # declares exactly what is needed, followed by a second frame that is a bomb
        "trailing-frame": lambda need: _zeros_frame(need, True) + _zeros_frame(BOMB, True),
    }


def _load(store: CheckpointStore, m, tmp: Path) -> None:
    store.load(m, str(tmp / "dest"))


def _open(store: CheckpointStore, m, tmp: Path) -> None:
    with store.open(m, "log.txt") as f:
        f.read()


def _verify(store: CheckpointStore, m, tmp: Path) -> None:
    # verify reads windows of one chunk (64 KiB here): anything more is the object's doing
    report = verify.verify(store.storage, deep=True, options=options())
    assert not report.ok
    bad = [c for c in report.corrupt]
    assert bad, "verify --deep must report the damaged blob"
    raise CheckpointIntegrityError(str(bad))


READERS = {"load": _load, "open": _open, "verify-deep": _verify}


@pytest.mark.parametrize("bomb", sorted(_bombs()))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_compressed_blob_never_costs_more_than_the_manifest_expects(tmp_path, reader, bomb):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options(compression="zstd"))
    write_tree(tmp_path / "src", {"log.txt": LOG})
    m = store.read(store.save(str(tmp_path / "src"), make_scope()).key)
    blob = m.files[0].chunks[0].blob
    assert blob.endswith(".zst")
    store.storage.put_bytes(blob_key(blob), _bombs()[bomb](blob_end(m, blob)))
    store.close()

    tracemalloc.start()
    try:
        with pytest.raises(CheckpointIntegrityError):
            READERS[reader](store, m, tmp_path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUND, "%s of a %s object allocated %d MiB" % (reader, bomb, peak >> 20)
    assert not (tmp_path / "dest" / "log.txt").exists()


def test_a_frame_declaring_more_than_needed_is_named_in_the_error(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options(compression="zstd"))
    write_tree(tmp_path / "src", {"log.txt": LOG})
    m = store.read(store.save(str(tmp_path / "src"), make_scope()).key)
    blob = m.files[0].chunks[0].blob
    store.storage.put_bytes(blob_key(blob), _zeros_frame(BOMB, True))
    with pytest.raises(CheckpointIntegrityError) as err:
        store.load(m, str(tmp_path / "dest"))
    assert "declares %d plain bytes, the manifest expects %d" % (BOMB, blob_end(m, blob)) in str(
        err.value
    )
    report = verify.verify(store.storage, deep=True)
    assert any(
        "declares %d plain bytes" % BOMB in " ".join(c.reasons if hasattr(c, "reasons") else [])
        or "declares %d plain bytes" % BOMB in str(c)
        for c in report.corrupt
    )
