"""Every reference carries ``status`` (where the checkpoint stands) and ``task_status`` (how
the attempt that saved it ended); a reference pickled before they existed answers
``"uploaded"`` and None, the truth of every checkpoint of those releases."""

from __future__ import annotations

import pickle

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    FIELDS,
    LOCAL,
    STATUSES,
    UPLOADED,
    CheckpointReference,
    reference_of,
    references,
)

from .helpers import make_scope, tiny


def test_references_carry_status_and_task_status(store, tmp_path):
    a = store.save(str(tiny(tmp_path)), make_scope())
    b = store.save(str(tiny(tmp_path)), make_scope(attempt=1))
    default = reference_of(store, a)
    assert (default.status, default.task_status) == (UPLOADED, None)
    assert {"status", "task_status"} <= set(FIELDS) <= set(default)
    local = reference_of(store, a, status=LOCAL, task_status="paused")
    assert (local["status"], local["task_status"]) == ("local", "paused")
    headers = store.headers(make_scope().task_prefix())
    refs = references(store, headers, status={a.key: LOCAL}, task_status={b.key: "failed"})
    by_key = {r.key: (r.status, r.task_status) for r in refs}
    assert by_key == {a.key: ("local", None), b.key: ("uploaded", "failed")}


def test_a_reference_pickled_before_statuses_answers_uploaded(store, tmp_path):
    ref = reference_of(store, store.save(str(tiny(tmp_path)), make_scope()))
    old = CheckpointReference({k: v for k, v in ref.items() if k not in ("status", "task_status")})
    old = pickle.loads(pickle.dumps(old))
    assert (old["status"], old.status, old.get("status")) == ("uploaded",) * 3
    assert (old["task_status"], old.task_status, old.get("task_status")) == (None,) * 3


def test_an_unknown_status_is_a_programming_error(store, tmp_path):
    manifest = store.save(str(tiny(tmp_path)), make_scope())
    with pytest.raises(ValueError, match="'stored' is not one of " + ", ".join(STATUSES)):
        reference_of(store, manifest, status="stored")
