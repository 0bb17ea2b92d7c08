"""``created_on`` of a reference is timezone-aware UTC (the reference extension's is naive local
time, ``datetime.now().isoformat()``): docs/compatibility.md's row and its fix for user code."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    reference_of,
    references,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import parse_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, write_tree


def test_created_on_is_aware_utc_and_ages_need_an_aware_now(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    before = datetime.now(timezone.utc)
    manifest = store.save(str(write_tree(tmp_path / "src", {"w.bin": b"w"})), make_scope())
    after = datetime.now(timezone.utc)

    # Both ways a reference is built: from the full manifest (a save, a load) and from the
    # manifest's key and summary (every listing) - they must carry the same aware instant.
    built = {
        "manifest": reference_of(store, manifest)["created_on"],
        "listing": references(store, [parse_key(manifest.key)])[0]["created_on"],
    }
    for how, created_on in built.items():
        assert isinstance(created_on, str) and created_on.endswith("+00:00"), (how, created_on)
        when = datetime.fromisoformat(created_on)
        assert when.utcoffset() == timedelta(0), how
        # The save's own instant (stored to the millisecond, cut down), not another clock's.
        assert before - timedelta(milliseconds=1) <= when <= after, (how, when, before, after)
        # The docs' fix for code written for the reference: an aware "now" minus it is an age.
        assert timedelta(0) <= datetime.now(timezone.utc) - when <= timedelta(minutes=1), how
    assert built["manifest"][:23] == built["listing"][:23], built  # to the millisecond
