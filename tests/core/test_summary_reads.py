"""What a listing's summaries read of the step's summary index: one GET, also when the
listing rewrites the index (it keeps the attempts' endings from that same read, not from a
second GET), and the endings recorded there survive the rewrite."""

from __future__ import annotations

import json

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    step_index_key,
    step_prefix_of,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.summary import endings

from .helpers import make_scope, options
from .test_list_reads import ReadCounting, _task


def test_a_listing_that_rewrites_the_step_index_reads_it_once_and_keeps_its_endings(tmp_path):
    storage = ReadCounting(str(tmp_path / "store"))
    first = _task(tmp_path, storage, 0)
    first.runtime.save(metadata={"epoch": 1})
    first.saves.write_summaries(ended="failed")
    store = CheckpointStore(storage, options())
    prefix = make_scope().task_prefix()
    assert set(endings(storage, store.headers(prefix)).values()) == {"failed"}  # recorded
    retry = _task(tmp_path, storage, 1)
    retry.runtime.save(metadata={"epoch": 2})  # not in the index yet: the listing rewrites it
    headers = store.headers(prefix)
    index = step_index_key(step_prefix_of(headers[0].key))
    recorded = json.loads((tmp_path / "store" / index).read_text())["ended"]
    assert list(recorded.values()) == ["failed"]
    storage.reads.clear()
    summaries = store.summaries(headers)
    assert sorted(s["metadata"]["epoch"] for s in summaries.values()) == [1, 2]
    assert storage.reads.count(index) == 1, storage.reads  # was 2: once more to write it
    body = json.loads((tmp_path / "store" / index).read_text())
    assert sorted(body["entries"]) == sorted(h.key for h in headers)
    assert body["ended"] == recorded
