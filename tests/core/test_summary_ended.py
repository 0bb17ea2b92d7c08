"""How an attempt ended, recorded in its task summary and read back by listings.

A task writes one summary per attempt (and per ``@parallel`` node) when it finishes; it now
also records ``ended`` ("succeeded", "failed", "paused"), which listings show as the
``task_status`` of that attempt's checkpoints.  A summary written before ``ended`` existed, or
a malformed one, reads as None (unknown), never as an error.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    step_index_key,
    task_summaries_prefix,
    task_summary_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import Manifest, now_ms
from metaflow_extensions.checkpointing.plugins.checkpointing.core.position import (
    RANK0,
    Position,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.summary import (
    ENDINGS,
    FAILED,
    PAUSED,
    SUCCEEDED,
    attempts_ended,
    endings,
    write_task_summaries,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import make_scope


def _manifest(attempt: int, n: int = 0) -> Manifest:
    scope = make_scope(attempt=attempt)
    created = now_ms() + n
    return Manifest("%016x" % created, "mfckpt", scope, True, created, 0, {"n": n}, [])


def test_each_attempt_reads_back_how_it_ended(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    prefix = make_scope().task_prefix()
    write_task_summaries(storage, prefix, 0, [_manifest(0)], ended=FAILED)
    write_task_summaries(storage, prefix, 1, [_manifest(1, 1)], ended=PAUSED)
    # A @parallel node's summary of attempt 1 says otherwise: rank 0's is the attempt's.
    write_task_summaries(storage, prefix, 1, [_manifest(1, 2)], Position(1, 0), ended=FAILED)
    # Attempt 2 written by a release that did not record it: unknown, not an error.
    write_task_summaries(storage, prefix, 2, [_manifest(2, 3)])
    # Attempt 3: only a @parallel node wrote (rank 0 saved nothing): its ending is the attempt's.
    write_task_summaries(storage, prefix, 3, [_manifest(3, 4)], Position(2, 0), ended=SUCCEEDED)
    assert attempts_ended(storage, prefix) == {0: FAILED, 1: PAUSED, 2: None, 3: SUCCEEDED}


def test_a_malformed_or_foreign_summary_reads_as_unknown(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    prefix = make_scope().task_prefix()
    storage.put_bytes(task_summary_key(prefix, 0), b"{not json")
    body = {"format": "metaflow-checkpointing-summaries/1", "entries": {}, "ended": "exploded"}
    storage.put_bytes(task_summary_key(prefix, 1), json.dumps(body).encode())
    assert attempts_ended(storage, prefix) == {0: None, 1: None}


def test_no_summary_is_written_when_nothing_was_committed():
    storage = MemoryStorage()
    prefix = make_scope().task_prefix()
    write_task_summaries(storage, prefix, 0, [], ended=PAUSED)
    assert attempts_ended(storage, prefix) == {}


def test_an_unknown_ending_is_refused_before_writing():
    storage = MemoryStorage()
    prefix = make_scope().task_prefix()
    with pytest.raises(ValueError, match="ended='crashed'"):
        write_task_summaries(storage, prefix, 0, [_manifest(0)], ended="crashed")
    assert attempts_ended(storage, prefix) == {}


@settings(max_examples=60, deadline=None)
@given(
    endings=st.dictionaries(
        st.integers(0, 10**6),
        st.tuples(st.sampled_from(ENDINGS + (None,)), st.integers(0, 3), st.integers(0, 3)),
        max_size=5,
    )
)
def test_round_trip_of_endings_by_attempt_and_writer(endings):
    storage = MemoryStorage()
    prefix = make_scope().task_prefix()
    for attempt, (ended, node, local) in endings.items():
        position = RANK0 if node == 0 and local == 0 else Position(node, local)
        write_task_summaries(storage, prefix, attempt, [_manifest(attempt)], position, ended)
    assert attempts_ended(storage, prefix) == {a: e for a, (e, _, _) in endings.items()}


# ------------------------------------------------------------------ endings of a listing
def _save(store, tmp_path, **scope):
    from .helpers import tiny

    return store.save(str(tiny(tmp_path)), make_scope(**scope))


def _drop_task_summaries(storage, headers):
    for h in headers:
        for obj in list(storage.list(task_summaries_prefix(h.scope.task_prefix()))):
            storage.delete(obj.key)


def test_a_listing_learns_each_ended_attempt_once_in_the_step_index(any_store, tmp_path):
    """The first listing reads each task's summaries and keeps what can no longer change in
    the step index: a later listing answers from it even with the summaries gone; an attempt
    with no summary yet (running) is read again, and picked up once it ends."""
    storage = any_store.storage
    done = _save(any_store, tmp_path, task="1")
    write_task_summaries(storage, done.scope.task_prefix(), 0, [done], ended=PAUSED)
    running = _save(any_store, tmp_path, task="2")
    headers = any_store.headers(make_scope().step_prefix())
    assert endings(storage, headers) == {done.key: PAUSED, running.key: None}
    _drop_task_summaries(storage, [h for h in headers if h.key == done.key])
    assert endings(storage, headers) == {done.key: PAUSED, running.key: None}
    write_task_summaries(storage, running.scope.task_prefix(), 0, [running], ended=FAILED)
    assert endings(storage, headers) == {done.key: PAUSED, running.key: FAILED}


def test_a_node_summary_alone_is_not_final_and_an_old_rank0_one_is(any_store, tmp_path):
    storage = any_store.storage
    gang = _save(any_store, tmp_path, task="1")
    old = _save(any_store, tmp_path, task="2")
    # A @parallel node wrote first, without an ending; rank 0's comes later and says paused.
    write_task_summaries(storage, gang.scope.task_prefix(), 0, [gang], Position(1, 0))
    write_task_summaries(storage, old.scope.task_prefix(), 0, [old])  # an older release
    headers = any_store.headers(make_scope().step_prefix())
    assert endings(storage, headers) == {gang.key: None, old.key: None}
    write_task_summaries(storage, gang.scope.task_prefix(), 0, [gang], ended=PAUSED)
    assert endings(storage, headers)[gang.key] == PAUSED


def test_rewriting_the_summary_index_keeps_the_endings(any_store, tmp_path):
    storage = any_store.storage
    first = _save(any_store, tmp_path, task="1")
    write_task_summaries(storage, first.scope.task_prefix(), 0, [first], ended=SUCCEEDED)
    headers = any_store.headers(make_scope().step_prefix())
    assert endings(storage, headers) == {first.key: SUCCEEDED}
    _drop_task_summaries(storage, headers)
    more = [_save(any_store, tmp_path, task=str(t)) for t in range(2, 12)]
    all_headers = any_store.headers(make_scope().step_prefix())
    any_store.summaries(all_headers)  # reads the new manifests and rewrites the step index
    index = json.loads(storage.get_bytes(step_index_key(make_scope().step_prefix())))
    assert len(index["entries"]) == 11 and index["ended"]
    ended = endings(storage, all_headers)
    assert ended[first.key] == SUCCEEDED and {ended[m.key] for m in more} == {None}


def test_a_malformed_endings_map_is_ignored(any_store, tmp_path):
    storage = any_store.storage
    done = _save(any_store, tmp_path, task="1")
    write_task_summaries(storage, done.scope.task_prefix(), 0, [done], ended=FAILED)
    key = step_index_key(make_scope().step_prefix())
    for bad in ([1], {"_/100/1/0": "exploded"}, {"no-slashes": FAILED}, "x"):
        body = {"format": "metaflow-checkpointing-summaries/1", "entries": {}, "ended": bad}
        storage.put_bytes(key, json.dumps(body).encode())
        headers = any_store.headers(make_scope().step_prefix())
        assert endings(storage, headers) == {done.key: FAILED}
