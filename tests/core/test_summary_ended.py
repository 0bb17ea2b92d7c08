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

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import task_summary_key
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
