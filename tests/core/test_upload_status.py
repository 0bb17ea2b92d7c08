"""Upload status records of a local tier (``core/upload_status.py``): what a listing shows for a
checkpoint saved with ``upload="end"``.

Records are real files in a tier on disk; a dead writer is a real process that recorded
``uploading`` and exited, a live one a real process still running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import layout
from metaflow_extensions.checkpointing.plugins.checkpointing.core import upload_status as us
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _key(task: str = "7", n: int = 0) -> str:
    return layout.manifest_key(
        make_scope(task=task).task_prefix(), 1_700_000_000_000 + n, 0, n, True, "ab%d" % n, "m"
    )


@PROPS
@given(
    status=st.sampled_from(us.STATUSES),
    error=st.none() | st.text(max_size=300),
)
def test_a_record_reads_back_as_written(tmp_path_factory, status, error):
    records = us.UploadRecords(LocalStorage(str(tmp_path_factory.mktemp("tier"))))
    key = _key()
    before = time.time()
    records.set(key, status, error)
    got = records.get(key)
    assert got is not None
    assert (got.status, got.error) == (status, error)
    assert (got.pid, got.host) == (os.getpid(), socket.gethostname())
    assert before <= got.at <= time.time()
    # Rewritten whole: the last status wins.
    records.set(key, us.UPLOADED)
    assert (records.get(key).status, records.get(key).error) == (us.UPLOADED, None)


def test_of_prefix_returns_the_records_of_one_task_by_manifest_key(tmp_path):
    records = us.UploadRecords(LocalStorage(str(tmp_path / "tier")))
    a, b, other = _key("7", 1), _key("7", 2), _key("8", 3)
    records.set(a, us.UPLOADING)
    records.set(b, us.FAILED, "store unreachable")
    records.set(other, us.UPLOADED)
    got = records.of_prefix(make_scope(task="7").task_prefix())
    assert set(got) == {a, b}
    assert got[b].status == us.FAILED and got[b].error == "store unreachable"
    assert records.of_prefix(make_scope(task="9").task_prefix()) == {}
    records.delete(a)
    assert records.get(a) is None


def test_a_bad_status_is_refused_before_anything_is_written(tmp_path):
    records = us.UploadRecords(LocalStorage(str(tmp_path / "tier")))
    with pytest.raises(CheckpointConfigError) as info:
        records.set(_key(), "done")
    assert "'done'" in info.value.message and "'uploaded'" in info.value.message
    assert not (tmp_path / "tier").exists()


def test_a_damaged_record_reads_as_no_record(tmp_path):
    storage = LocalStorage(str(tmp_path / "tier"))
    records = us.UploadRecords(storage)
    key = _key()
    for body in (b"{", b'{"status": "sent"}', b"[]", b'{"status": "failed", "error": 3}'):
        storage.put_bytes(layout.upload_record_key(key), body)
        assert records.get(key) is None
        assert us.effective(records.get(key)) == us.LOCAL


_RECORD = textwrap.dedent(
    """
    import sys
    import metaflow  # noqa: F401
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.upload_status import (
        UploadRecords,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

    UploadRecords(LocalStorage(sys.argv[1])).set(sys.argv[2], "uploading")
    print("recorded", flush=True)
    if sys.argv[3] == "wait":
        sys.stdin.read()
    """
)


def _writer(root: str, key: str, wait: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _RECORD, root, key, "wait" if wait else "exit"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_uploading_reads_as_such_while_the_writer_lives_and_as_local_once_it_died(tmp_path):
    root = str(tmp_path / "tier")
    records = us.UploadRecords(LocalStorage(root))
    key = _key()
    live = _writer(root, key, wait=True)
    try:
        assert live.stdout.readline().strip() == "recorded"
        record = records.get(key)
        assert record.pid == live.pid
        assert us.effective(record) == us.UPLOADING
    finally:
        live.communicate("")
    assert live.returncode == 0
    # The same record, its writer gone: the upload never finished, the checkpoint is local.
    assert us.effective(records.get(key)) == us.LOCAL


def test_effective_status_of_each_record():
    me = (time.time(), os.getpid(), socket.gethostname())
    assert us.effective(None) == us.LOCAL
    for status in us.STATUSES:
        # An "uploaded" record of a key the flow's store lacks (as read) is not taken for it.
        want = us.LOCAL if status == us.UPLOADED else status
        assert us.effective(us.Record(status, None, *me)) == want
    # Another host's writer cannot be judged from here: shown as recorded.
    elsewhere = us.Record(us.UPLOADING, None, time.time(), 1, socket.gethostname() + "-other")
    assert us.effective(elsewhere) == us.UPLOADING


def test_the_task_view_says_local_for_a_record_saying_uploaded_when_the_store_lacks_it(tmp_path):
    """The in-task view (``task/upload_policy.py``, ``task/tiered_store.py``) follows the
    client's rule: a tier-only checkpoint is ``uploaded`` only if the key is in the flow's
    store."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.tiered_store import (
        TieredStore,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.upload_policy import (
        UploadPolicy,
    )

    from .helpers import options, write_tree

    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")), options())
    policy = UploadPolicy(remote, mode="end", base=str(tmp_path / "base"), log=lambda m: None)
    src = write_tree(tmp_path / "src", {"a.txt": b"state"})
    key = policy.tier.save(str(src), make_scope()).key
    policy.upload(key)
    assert policy.status_of(key) == us.UPLOADED
    remote.delete(key)  # deleted from the flow's store since (by hand, or its retention)
    later = UploadPolicy(remote, mode="end", base=str(tmp_path / "base"), log=lambda m: None)
    assert later.records.get(key).status == us.UPLOADED  # the record still says so
    assert later.status_of(key) == us.LOCAL
    view = TieredStore(later)
    headers = view.headers(make_scope().task_prefix())
    assert view.statuses(headers) == {key: us.LOCAL}
    for store in (policy.tier, later.tier, remote):
        store.close()
