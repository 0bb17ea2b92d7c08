"""``created_on`` of a reference is timezone-aware UTC (the reference extension's is naive local
time, ``datetime.now().isoformat()``): docs/compatibility.md's row and its fix for user code."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import reference_of
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, write_tree


def test_created_on_is_aware_utc_and_ages_need_an_aware_now(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    before = datetime.now(timezone.utc)
    manifest = store.save(str(write_tree(tmp_path / "src", {"w.bin": b"w"})), make_scope())
    created_on = reference_of(store, manifest)["created_on"]

    assert isinstance(created_on, str) and created_on.endswith("+00:00"), created_on
    when = datetime.fromisoformat(created_on)
    assert when.utcoffset() == timedelta(0)
    # The fix for code written for the reference: compare with an aware "now".
    age = datetime.now(timezone.utc) - when
    assert timedelta(0) <= age + timedelta(seconds=1) and when >= before - timedelta(seconds=1)
    # The reference's spelling, datetime.now() - created_on, mixes naive and aware.
    with pytest.raises(TypeError, match="offset-naive and offset-aware"):
        datetime.now() - when  # noqa: DTZ005 - the reference-style code this row is about
