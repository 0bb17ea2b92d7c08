"""Sharded saves (``save(sharded=True)``, ADR 004) between real processes, and what ends their
waits early: gone markers and signals.

Participants are real processes (``torchrun``-style workers with ``RANK``/``WORLD_SIZE`` set,
saving through ``Checkpoint()`` in a task's context; or a ``@parallel`` node's step process
built by the task's builder with its signal handlers installed) against the local store and
the moto S3 server.  Waits are bounded by a 120 s ``METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT``: a
test that ends (pytest-timeout: 90 s) proves a wait was cut short, without timing asserts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
    store_for_url,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core import gang, layout
from metaflow_extensions.checkpointing.plugins.checkpointing.core.position import (
    RANK0,
    Position,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointIncomplete,
    ManifestError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
    TASK_ENV,
    TaskContext,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.ranks import Ranks

from .helpers import make_scope, options, write_tree

REPO = Path(__file__).resolve().parents[2]
SCOPE = make_scope(step="train", task="7")
#: Long enough never to be what ends a test's wait; short enough to fail rather than hang.
TIMEOUT = "120"

#: A torchrun-style worker: saves its directory with Checkpoint().save(sharded=True), then
#: loads "last" back; prints one JSON line (what it committed and loaded, or its error).
WORKER = r"""
import json, os, sys
from metaflow import Checkpoint
src, out = sys.argv[1], sys.argv[2]
try:
    ck = Checkpoint()
    ref = ck.save(src, metadata={"rank": int(os.environ["RANK"])}, sharded=True)
    loaded = ck.load("last", out)
    files = sorted(os.path.relpath(os.path.join(p, n), loaded)
                   for p, _, ns in os.walk(loaded) for n in ns)
    print(json.dumps({"key": ref.key, "writer": ref.writer, "sharded": ref.sharded,
                      "loaded": files,
                      "text": open(os.path.join(loaded, "part.txt")).read()}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _context(root: str, directory: Path, **fields) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return TaskContext(root=root, scope=SCOPE, directory=str(directory), **fields).to_env()


def _env(tmp_path: Path, root: str, extra: dict, **variables) -> dict:
    env = dict(os.environ, **extra)
    env.update({k: str(v) for k, v in variables.items()})
    env[TASK_ENV] = _context(root, tmp_path / "task-dir")
    env["METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT"] = TIMEOUT
    return env


def _worker(tmp_path: Path, root: str, rank: int, world: int, extra: dict, src=None):
    """Start worker ``rank`` of ``world`` saving ``src`` (default: a directory of its own)."""
    if src is None:
        src = write_tree(tmp_path / ("src-%d" % rank), {"part.txt": b"rank %d" % rank})
    env = _env(tmp_path, root, extra, RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(src), str(tmp_path / ("out-%d" % rank))],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=80)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, "no result from a worker:\n%s\n%s" % (out, err)
    return json.loads(lines[-1])


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """(root URL, environment a child process needs for it)."""
    if request.param == "local":
        return str(tmp_path / "store"), {}
    s3 = request.getfixturevalue("s3_env")
    return "s3://%s/ckpt" % s3["new_bucket"](), s3["env"]


# ------------------------------------------------------------------------------ a sharded save
@pytest.mark.timeout(90)
def test_three_workers_commit_one_checkpoint_and_each_loads_its_own_part(root, tmp_path):
    url, extra = root
    procs = [_worker(tmp_path, url, r, 3, extra) for r in range(3)]
    results = [_result(p) for p in procs]
    assert all("error" not in r for r in results), results
    assert len({r["key"] for r in results}) == 1  # one checkpoint, returned on every rank
    for rank, r in enumerate(results):
        assert (r["writer"], r["sharded"]) == (None, True)
        assert (r["loaded"], r["text"]) == (["part.txt"], "rank %d" % rank)  # its own part
    store = store_for_url(url)
    [header] = store.headers(SCOPE.task_prefix())
    assert (header.sharded, header.position) == (True, RANK0) and "-Ls-" in header.key
    manifest = store.read(header.key)
    assert manifest.source["ranks"] == 3 and manifest.source["by"] == "rank"
    assert sorted(f.path for f in manifest.files) == ["rank-%d/part.txt" % r for r in range(3)]
    assert not store.storage.list(layout.PARTS_PREFIX)  # parts are removed once committed


def test_a_process_without_a_rank_loads_every_part_of_a_rank_sharded_checkpoint(tmp_path):
    """A process of the task with no RANK (the step, a helper) has no part of its own."""
    url = str(tmp_path / "store")
    procs = [_worker(tmp_path, url, r, 2, {}) for r in range(2)]
    assert all("error" not in _result(p) for p in procs)
    context = TaskContext.from_env({TASK_ENV: _context(url, tmp_path / "task-dir")})
    runtime = context.runtime(ranks=context.ranks({}))
    loaded = runtime.load("last", str(tmp_path / "all"))
    assert sorted(os.listdir(loaded)) == ["rank-0", "rank-1"]


#: A torchrun-style worker making ``argv[2]`` sharded saves of its directory, each through a
#: new ``Checkpoint()`` (as a framework callback without ``current`` does); rank 1 a little
#: behind, as real ranks are; save number ``argv[4]`` fails.  Prints ``{"saves": [key or
#: error, ...]}``.
EPOCHS = r"""
import json, os, sys, time
from metaflow import Checkpoint
src, epochs, tag, fail = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rank, out = int(os.environ["RANK"]), []
for epoch in range(epochs):
    with open(os.path.join(src, "part.txt"), "w") as f:
        f.write("rank %d %s %d" % (rank, tag, epoch))
    if rank == 1:
        time.sleep(0.3)
    path = src + "-missing" if epoch == fail else src  # fails: its directory is not there
    try:
        out.append(Checkpoint().save(path, metadata={"epoch": epoch}, sharded=True).key)
    except Exception as exc:
        out.append({"error": type(exc).__name__, "message": str(exc)})
print(json.dumps({"saves": out}))
"""


def _epochs(tmp_path: Path, url: str, rank: int, world: int, epochs: int, tag: str, fail=-1, **env):
    src = tmp_path / ("src-%d" % rank)
    src.mkdir(exist_ok=True)
    variables = _env(tmp_path, url, {}, RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank)
    variables.update({k: str(v) for k, v in env.items()})
    return subprocess.Popen(
        [sys.executable, "-c", EPOCHS, str(src), str(epochs), tag, str(fail)],
        env=variables,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _texts(store: CheckpointStore, key: str) -> dict:
    manifest = store.read(key)
    return {f.path: store.open(manifest, f.path).read().decode() for f in manifest.files}


@pytest.mark.timeout(90)
def test_a_checkpoint_made_per_save_still_counts_the_saves_of_its_process(tmp_path):
    """The count of sharded saves is per process (review r1: it was per object, so every
    epoch's id was the first one's and ranks returned checkpoints of other epochs)."""
    url = str(tmp_path / "store")
    procs = [_epochs(tmp_path, url, r, 2, 3, "epoch") for r in range(2)]
    saves = [_result(p)["saves"] for p in procs]
    assert saves[0] == saves[1] and len(set(saves[0])) == 3, saves  # the same 3 on both ranks
    store = store_for_url(url)
    assert len(store.headers(SCOPE.task_prefix())) == 3
    for epoch, key in enumerate(saves[0]):
        assert store.read(key).metadata == {"epoch": epoch}
        assert _texts(store, key) == {
            "rank-%d/part.txt" % r: "rank %d epoch %d" % (r, epoch) for r in range(2)
        }


@pytest.mark.timeout(90)
def test_a_new_process_per_sharded_save_is_refused_not_committed_twice(tmp_path):
    """A second process per rank starts counting at 0 again: participant 0 refuses to commit
    an id that already has a manifest, naming the save and what to do, and rank 1 does not
    take the first round's checkpoint, which lacks its new part, for its own."""
    url = str(tmp_path / "store")
    first = [_epochs(tmp_path, url, r, 2, 1, "round-1") for r in range(2)]
    [key] = {k for p in first for k in _result(p)["saves"]}
    second = [_epochs(tmp_path, url, r, 2, 1, "round-2") for r in range(2)]
    [rank0], [rank1] = (_result(p)["saves"] for p in second)
    assert rank0["error"] == "CheckpointConfigError", rank0
    assert "Sharded save #0 of 'mfchckpt'" in rank0["message"]
    assert "was already committed, as %s" % key in rank0["message"]
    assert "in the same process" in rank0["message"]
    assert rank1["error"] == "CheckpointIncomplete", rank1
    store = store_for_url(url)
    assert [h.key for h in store.headers(SCOPE.task_prefix())] == [key]
    assert set(_texts(store, key).values()) == {"rank 0 round-1 0", "rank 1 round-1 0"}


@pytest.mark.timeout(90)
def test_a_rank_disagreeing_on_the_world_size_is_named_not_left_out(tmp_path):
    """Ranks 0 and 1 say WORLD_SIZE=2, rank 2 says 3 (review r6): the id holds the world size,
    so rank 2 waits for another checkpoint and its timeout says why, instead of returning the
    two ranks' checkpoint as if its part were in it."""
    url = str(tmp_path / "store")
    odd = _epochs(tmp_path, url, 2, 3, 1, "x", METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT=2, LOCAL_RANK=0)
    pair = [_epochs(tmp_path, url, r, 2, 1, "x") for r in range(2)]
    keys = [_result(p)["saves"][0] for p in pair]
    [error] = _result(odd)["saves"]
    assert keys[0] == keys[1] and isinstance(keys[0], str)
    assert error["error"] == "CheckpointIncomplete", error
    assert "agree that there are 3; this is rank 2" in error["message"]
    store = store_for_url(url)
    assert [h.key for h in store.headers(SCOPE.task_prefix())] == [keys[0]]


# ------------------------------------------------------------------------------ gone markers
@pytest.mark.timeout(90)
def test_a_failing_participant_makes_the_others_stop_naming_it(root, tmp_path):
    """Rank 1's save fails (its directory is gone): it marks itself gone, and ranks 0 and 2
    stop waiting at once with an error naming rank 1 and its error; nothing is committed."""
    url, extra = root
    procs = [
        _worker(tmp_path, url, r, 3, extra, src=tmp_path / "vanished" if r == 1 else None)
        for r in range(3)
    ]
    results = [_result(p) for p in procs]
    assert results[1]["error"] == "CheckpointConfigError"
    for r in (results[0], results[2]):
        assert r["error"] == "CheckpointIncomplete", r
        assert "rank 1 will not save it" in r["message"]
        assert "its sharded save of 'mfchckpt' failed: CheckpointConfigError" in r["message"]
    store = store_for_url(url)
    assert store.headers(SCOPE.task_prefix()) == []
    # Rank 1 is gone from this save, and so are those it stopped (their saves failed too);
    # from the attempt only once their processes exited.
    id = gang.gang_id(SCOPE, "mfchckpt", 0, "rank", world=3)
    markers = gang.gone(store.storage, SCOPE, save=id)
    of_save = {g.index: g.reason for g in markers if g.save == id}
    assert of_save[1].startswith("its sharded save of 'mfchckpt' failed")
    assert sorted(of_save) == [0, 1, 2]
    assert {g.reason for g in markers if g.save is None} == {"its process exited"}


@pytest.mark.timeout(90)
def test_one_failed_sharded_save_stops_that_save_only(tmp_path):
    """Best-effort checkpointing (catch the error, train on): rank 1's save of epoch 1 fails
    (review r7). That save fails on both ranks, naming rank 1; epochs 0, 2 and 3 commit."""
    url = str(tmp_path / "store")
    procs = [_epochs(tmp_path, url, r, 2, 4, "epoch", fail=1 if r == 1 else -1) for r in (0, 1)]
    rank0, rank1 = (_result(p)["saves"] for p in procs)
    assert rank1[1]["error"] == "CheckpointConfigError", rank1
    assert rank0[1]["error"] == "CheckpointIncomplete", rank0
    assert "rank 1 will not save it" in rank0[1]["message"]
    assert [rank0[e] for e in (0, 2, 3)] == [rank1[e] for e in (0, 2, 3)]
    store = store_for_url(url)
    epochs = sorted(store.read(h.key).metadata["epoch"] for h in store.headers(SCOPE.task_prefix()))
    assert epochs == [0, 2, 3]


@pytest.mark.timeout(90)
def test_a_rank_that_exited_is_named_not_waited_for(tmp_path):
    """Rank 0 makes one more sharded save than rank 1, whose process then exits (review r3):
    rank 0's extra save stops naming rank 1 and what to fix, not after the 120 s timeout."""
    url = str(tmp_path / "store")
    rank0, rank1 = (_epochs(tmp_path, url, r, 2, 2 - r, "epoch") for r in (0, 1))
    assert isinstance(_result(rank1)["saves"][0], str)
    first, extra = _result(rank0)["saves"]
    assert isinstance(first, str) and extra["error"] == "CheckpointIncomplete", extra
    assert (
        "rank 1: its process exited after 1 sharded save(s) of 'mfchckpt', without making "
        "this one (every rank must call save(sharded=True) the same number of times per name)"
    ) in extra["message"]


@pytest.mark.timeout(90)
def test_a_node_whose_step_ended_is_named_not_waited_for(tmp_path):
    """Node 0 waits in a sharded save that node 1's step never makes; node 1's task ends
    (its step succeeded): its session's end marks it gone, and node 0 stops naming it."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (
        TaskSettings,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", {"part.txt": b"node 0"})
    outcome: dict = {}

    def node0():
        try:
            store.save_gang(
                str(src), SCOPE, name="mfchckpt", metadata={}, latest=True,
                participant=gang.Participant("node", 0, 2), number=0, timeout=120,
            )  # fmt: skip
        except CheckpointIncomplete as exc:
            outcome["error"] = exc.message

    t = threading.Thread(target=node0)
    t.start()
    _until(lambda: store.storage.list(layout.PARTS_PREFIX))  # node 0 is waiting
    session = TaskSession.start(
        store,
        SCOPE,
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root=str(tmp_path / "tmp"),
        ranks=Ranks.of_step(1, 2, gang=True),
        settings=TaskSettings(async_budget=1 << 20, parallel_timeout=120.0, pause_poll_seconds=0),
        log=lambda m: None,
    )
    session.step_succeeded()
    session.end()
    t.join(60)
    assert not t.is_alive()
    assert "node 1: its step ended without making this save" in outcome["error"]
    assert store.headers(SCOPE.task_prefix()) == []


@pytest.mark.timeout(90)
def test_a_node_marked_gone_stops_a_wait_within_seconds(tmp_path):
    """Node 0 waits for node 1's part; node 1's step fails (its session publishes the marker,
    as TaskSaves.leave does): node 0's save ends naming node 1 and why."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", {"part.txt": b"node 0"})
    outcome: dict = {}

    def node0():
        try:
            store.save_gang(
                str(src), SCOPE, name="mfchckpt", metadata={}, latest=True,
                participant=gang.Participant("node", 0, 2), number=0, timeout=120,
            )  # fmt: skip
        except CheckpointIncomplete as exc:
            outcome["error"] = exc.message

    t = threading.Thread(target=node0)
    t.start()
    _until(lambda: store.storage.list(layout.PARTS_PREFIX))  # node 0 is waiting
    gang.mark_gone(store.storage, SCOPE, ("node", 1), "its step failed: RuntimeError: boom")
    t.join(60)
    assert not t.is_alive()
    assert "node 1 will not save it" in outcome["error"]
    assert "node 1: its step failed: RuntimeError: boom" in outcome["error"]
    assert store.headers(SCOPE.task_prefix()) == []


def test_a_participant_gone_after_storing_its_part_does_not_stop_the_commit(tmp_path):
    """Commit what can be committed: node 1 stored its part, then its step failed."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    parts = [write_tree(tmp_path / ("n%d" % n), {"part.txt": b"node %d" % n}) for n in range(2)]
    id = gang.gang_id(SCOPE, "mfchckpt", 0, world=2)
    store.save(
        str(parts[1]), SCOPE, publish=lambda m: gang.write_part(store.storage, SCOPE, id, 1, m)
    )
    gang.mark_gone(store.storage, SCOPE, ("node", 1), "its step failed after saving")
    manifest = store.save_gang(
        str(parts[0]), SCOPE, name="mfchckpt", metadata={}, latest=True,
        participant=gang.Participant("node", 0, 2), number=0, timeout=120,
    )  # fmt: skip
    assert manifest.sharded and len(manifest.files) == 2


def test_rank_markers_of_another_restart_do_not_stop_a_wait(tmp_path):
    """A worker group restarted by torchrun starts clean: restart 0's rank marker does not end
    restart 1's wait (it times out naming the missing rank instead); a node marker would."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", {"part.txt": b"rank 0"})
    gang.mark_gone(store.storage, SCOPE, ("rank", 1), "crashed in restart 0", restart=0)
    me = gang.Participant("rank", 0, 2, restart=1)
    with pytest.raises(CheckpointIncomplete, match="rank\\(s\\) 1 did not save their part"):
        store.save_gang(
            str(src), SCOPE, name="mfchckpt", metadata={}, latest=True, participant=me,
            number=0, timeout=1,
        )  # fmt: skip
    gang.mark_gone(store.storage, SCOPE, ("node", 0), "its step failed")
    with pytest.raises(CheckpointIncomplete, match="node 0 will not save it"):
        store.save_gang(
            str(src), SCOPE, name="mfchckpt", metadata={}, latest=True, participant=me,
            number=1, timeout=120,
        )  # fmt: skip


@pytest.mark.parametrize(
    "body, says",
    [
        (b'{"files": 5}', "files must be"),
        (b'{"files": [{"path": "x"}]}', "size"),
        (b"[]", "lists no files"),
        (b'{"files": [{"path": "../../../etc/evil", "size": 0, "mode": 420, "chunks": []}]}',
         "not a plain relative path"),
        (b'{"files": [{"path": "a", "size": 5, "mode": 420, "chunks": []}]}', "is empty"),
        (b"{not json", "Expecting property name"),
    ],
)  # fmt: skip
def test_participant_0_refuses_a_hostile_part_naming_it(tmp_path, body, says):
    """Whatever rank 1's part holds, participant 0 validates it as a manifest's files are
    (review r5): a bad one is a ManifestError naming its key and the rank; nothing is
    committed, no file of it reaches a loading process."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", {"a.txt": b"rank 0"})
    me = gang.Participant("rank", 0, 2)
    key = layout.part_key(SCOPE.task_prefix(), gang.save_id(SCOPE, "mfchckpt", 0, me), 1)
    store.storage.put_bytes(key, body)
    with pytest.raises(ManifestError) as error:
        store.save_gang(
            str(src), SCOPE, name="mfchckpt", metadata={}, latest=True, participant=me,
            number=0, timeout=120,
        )  # fmt: skip
    assert "Part %s of rank 1" % key in error.value.message and says in error.value.message
    assert store.headers(SCOPE.task_prefix()) == []


def test_a_huge_gone_reason_is_cut_when_read(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    key = layout.gone_key(SCOPE.task_prefix(), 0, "rank", 1)
    store.storage.put_bytes(key, json.dumps({"reason": "A" * 2_000_000}).encode())
    [marker] = gang.gone(store.storage, SCOPE)
    assert marker.reason == "A" * gang.REASON_LIMIT


# ------------------------------------------------------------------------------ signals
#: A @parallel node 0's step process: its task's parts built by the task's builder, signal
#: handlers installed, waiting in a sharded save for node 1 (which never saves).
NODE0 = r"""
import json, sys
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import store_for_url
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings, build
from metaflow_extensions.checkpointing.plugins.checkpointing.task.ranks import Ranks
root, directory, scope = sys.argv[1], sys.argv[2], Scope.from_dict(json.loads(sys.argv[3]))
parts = build(store_for_url(root), scope, directory, log=lambda m: None,
              settings=TaskSettings(async_budget=1 << 30, parallel_timeout=120.0,
                                    pause_poll_seconds=0.0),
              ranks=Ranks.of_step(0, 2, gang=True))
parts.interrupts.install(parts.saves)
try:
    parts.runtime.save(metadata={"epoch": 1}, sharded=True)
    print(json.dumps({"returned": True}))
except BaseException as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                      "cause": str(exc.__cause__)}))
"""


@pytest.mark.timeout(90)
def test_sigterm_ends_a_participants_wait_and_nothing_is_committed(tmp_path):
    url = str(tmp_path / "store")
    directory = write_tree(tmp_path / "dir", {"state.txt": b"epoch 1"})
    proc = subprocess.Popen(
        [sys.executable, "-c", NODE0, url, str(directory), json.dumps(SCOPE.to_dict())],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    storage = LocalStorage(url)
    _until(lambda: storage.list(layout.PARTS_PREFIX), proc)  # its part is stored: it waits
    proc.send_signal(signal.SIGTERM)
    result = _result(proc)
    assert result["error"] == "CheckpointInterrupted", result
    assert "received SIGTERM" in result["message"]
    assert "stopped waiting for node(s) 1: received SIGTERM" in result["cause"]
    assert CheckpointStore(storage, options()).headers(SCOPE.task_prefix()) == []


SLOW_NODE0 = NODE0.replace(
    "root, directory",
    "from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import "
    "LocalStorage\n"
    "import time\n"
    "_ingest = LocalStorage.ingest_range\n"
    "def _slow(self, *a, **k):\n"
    "    time.sleep(1.0)\n"
    "    return _ingest(self, *a, **k)\n"
    "LocalStorage.ingest_range = _slow\n"
    "root, directory",
    1,
)


@pytest.mark.timeout(90)
def test_sigterm_stops_the_upload_of_a_participants_part(tmp_path):
    """A signal during the upload of a big part ends it at its next chunk (the part could never
    be committed without this participant's wait anyway), not after the whole upload."""
    url = str(tmp_path / "store")
    # Files of their own blobs (over the 1 MiB packing size), one second each: ~4 s at least.
    files = {"f%02d.bin" % i: os.urandom(1_200_000) for i in range(64)}
    directory = write_tree(tmp_path / "dir", files)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_NODE0, url, str(directory), json.dumps(SCOPE.to_dict())],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    storage = LocalStorage(url)
    _until(lambda: storage.list(layout.BLOBS_PREFIX), proc)  # its upload has started
    proc.send_signal(signal.SIGTERM)
    result = _result(proc)
    assert result["error"] == "CheckpointInterrupted", result
    assert "stopped uploading this part: received SIGTERM" in result["cause"], result
    assert len(storage.list(layout.BLOBS_PREFIX)) < len(files)  # it did not upload on
    assert not storage.list(layout.PARTS_PREFIX)
    assert CheckpointStore(storage, options()).headers(SCOPE.task_prefix()) == []


#: Node 1's step process: stores its part, then waits for node 0's commit.
NODE1 = NODE0.replace("Ranks.of_step(0, 2", "Ranks.of_step(1, 2", 1)


def _node1(tmp_path: Path, url: str):
    directory = write_tree(tmp_path / "dir1", {"state.txt": b"node 1"})
    return subprocess.Popen(
        [sys.executable, "-c", NODE1, url, str(directory), json.dumps(SCOPE.to_dict())],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _save_node0(store: CheckpointStore, tmp_path: Path):
    src = write_tree(tmp_path / "dir0", {"state.txt": b"node 0"})
    return store.save_gang(
        str(src), SCOPE, name="mfchckpt", metadata={}, latest=True,
        participant=gang.Participant("node", 0, 2), number=0, timeout=120,
    )  # fmt: skip


@pytest.mark.timeout(90)
def test_a_participant_stopped_by_sigterm_withdraws_its_part_so_it_is_never_committed(tmp_path):
    """Node 1 stored its part and waits; SIGTERM ends its wait saying nothing was committed.
    Node 0 arriving later must not commit a checkpoint holding node 1's part (it used to: the
    message was false); it stops naming node 1 instead."""
    url = str(tmp_path / "store")
    storage = LocalStorage(url)
    proc = _node1(tmp_path, url)
    _until(lambda: storage.list(layout.PARTS_PREFIX), proc)  # its part is stored: it waits
    proc.send_signal(signal.SIGTERM)
    result = _result(proc)
    assert result["error"] == "CheckpointInterrupted", result
    assert "stopped waiting for node 0 to commit it: received SIGTERM" in result["cause"]
    assert "this node withdrew its part, so it never will be" in result["cause"]
    store = CheckpointStore(storage, options())
    with pytest.raises(CheckpointIncomplete, match="node\\(s\\) 1 withdrew their part"):
        _save_node0(store, tmp_path)
    assert store.headers(SCOPE.task_prefix()) == []
    assert not storage.list(layout.PARTS_PREFIX)  # the refused save's parts and markers went


class _PausingStorage(LocalStorage):
    """Participant 0's store: holds it right after it has collected every part (or, with
    ``before_manifest``, right before its manifest write)."""

    def __init__(self, root: str, before_manifest: bool = False):
        super().__init__(root)
        self.collected, self.release = threading.Event(), threading.Event()
        self._before_manifest = before_manifest

    def put_bytes(self, key, data) -> None:
        if self._before_manifest and key.startswith(layout.MANIFESTS_PREFIX):
            self.collected.set()
            self.release.wait(60)
        super().put_bytes(key, data)
        if not self._before_manifest and key.endswith("/" + gang.COLLECTED):
            self.collected.set()
            self.release.wait(60)


@pytest.mark.timeout(90)
def test_a_part_withdrawn_after_the_last_look_keeps_its_blobs_from_gc(tmp_path):
    """Node 1 withdraws after node 0's last look, then exits (its lease ends); GC with grace 0
    runs before node 0's manifest write. The withdrawn part stays a GC root until node 0 is
    done, so the checkpoint node 0 commits loads whole (review: deleting the part let GC
    delete node 1's blobs under a committed manifest)."""
    url = str(tmp_path / "store")
    other = write_tree(tmp_path / "other", {"o.txt": b"another checkpoint"})
    earlier = CheckpointStore(LocalStorage(url), options())
    earlier.save(str(other), make_scope(run="9"))  # so GC needs no force
    earlier.close()  # that writer is gone: its lease protects nothing
    proc = _node1(tmp_path, url)
    storage = _PausingStorage(url, before_manifest=True)
    _until(lambda: storage.list(layout.PARTS_PREFIX), proc)
    time.sleep(1.5)  # node 0's lease starts after node 1's uploads (mtimes have 1 s steps)
    outcome: dict = {}

    def node0() -> None:
        outcome["manifest"] = _save_node0(CheckpointStore(storage, options()), tmp_path)

    thread = threading.Thread(target=node0)
    thread.start()
    try:
        assert storage.collected.wait(60)  # past its last look, about to write the manifest
        proc.send_signal(signal.SIGTERM)
        result = _result(proc)
        assert "may still be committed by node 0" in result["cause"], result
        CheckpointStore(LocalStorage(url), options()).gc(grace_seconds=0)
    finally:
        storage.release.set()
        thread.join(60)
    manifest = outcome["manifest"]
    store = CheckpointStore(LocalStorage(url), options())
    store.load(store.read(manifest.key), str(tmp_path / "out"))  # every blob is there
    assert (tmp_path / "out" / "rank-1" / "state.txt").read_bytes() == b"node 1"


@pytest.mark.timeout(90)
def test_a_part_withdrawn_after_participant_0_collected_it_is_refused_or_said_maybe(tmp_path):
    """The window that remains: node 0 has collected every part when node 1, stopped by
    SIGTERM, withdraws its own. Node 1 says the checkpoint may still be committed (not "was
    not committed"); node 0's last look before the manifest finds the part gone and refuses."""
    url = str(tmp_path / "store")
    proc = _node1(tmp_path, url)
    storage = _PausingStorage(url)
    _until(lambda: storage.list(layout.PARTS_PREFIX), proc)
    outcome: dict = {}

    def node0() -> None:
        try:
            outcome["manifest"] = _save_node0(CheckpointStore(storage, options()), tmp_path)
        except CheckpointIncomplete as exc:
            outcome["error"] = exc.message

    thread = threading.Thread(target=node0)
    thread.start()
    try:
        assert storage.collected.wait(60)
        proc.send_signal(signal.SIGTERM)
        result = _result(proc)
    finally:
        storage.release.set()
        thread.join(60)
    assert result["error"] == "CheckpointInterrupted", result
    assert "may still be committed by node 0" in result["cause"], result
    assert "was not committed" not in result["cause"]
    assert "node(s) 1 withdrew their part" in outcome.get("error", ""), outcome
    assert CheckpointStore(storage, options()).headers(SCOPE.task_prefix()) == []


# ------------------------------------------------------------------------------ who a process is
def test_a_subprocess_reads_its_torchrun_variables():
    ranks = Ranks.of_subprocess(
        1, 2, {"LOCAL_RANK": "3", "RANK": "7", "WORLD_SIZE": "8", "TORCHELASTIC_RESTART_COUNT": "2"}
    )
    assert ranks.position == Position(1, 3)
    assert ranks.participant == gang.Participant("rank", 7, 8, restart=2)
    assert ranks.source == {"rank": 7, "local_rank": 3, "world_size": 8}
    assert ranks.problem is None
    plain = Ranks.of_subprocess(1, 2, {})
    assert (plain.position, plain.participant) == (Position(1, 0), gang.Participant("node", 1, 2))


def test_minus_one_means_not_distributed():
    """Hugging Face sets LOCAL_RANK=-1 (and some launchers RANK=-1) outside distributed
    training: treated as unset, not refused (review)."""
    ranks = Ranks.of_subprocess(1, 2, {"LOCAL_RANK": "-1", "RANK": "-1"})
    assert (ranks.position, ranks.participant) == (Position(1, 0), gang.Participant("node", 1, 2))
    assert ranks.problem is None and ranks.source == {}


@pytest.mark.parametrize(
    "environ, names",
    [
        ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
        ({"RANK": "-2", "WORLD_SIZE": "2"}, "RANK='-2'"),
        ({"WORLD_SIZE": "-1"}, "WORLD_SIZE='-1'"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
        ({"RANK": "1.0", "WORLD_SIZE": "2"}, "RANK='1.0'"),
        ({"TORCHELASTIC_RESTART_COUNT": "two"}, "TORCHELASTIC_RESTART_COUNT='two'"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK=4 is not below WORLD_SIZE=4"),
    ],
)
def test_malformed_torchrun_variables_are_config_errors_naming_them(environ, names):
    with pytest.raises(CheckpointConfigError, match=names.replace(".", "\\.")):
        Ranks.of_subprocess(0, 1, environ)


@pytest.mark.parametrize(
    "environ, nodes, says",
    [
        ({"RANK": "1"}, 1, "RANK is set but WORLD_SIZE is not"),
        ({"WORLD_SIZE": "2"}, 1, "WORLD_SIZE is set but RANK is not"),
        (
            {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"},
            2,
            "worker group local to node 0 of a 2-node @parallel gang",
        ),
    ],
)
def test_sharded_saves_are_refused_where_the_group_is_unknown(tmp_path, environ, nodes, says):
    """Plain saves work; a sharded save says why it cannot know its group (nothing written)."""
    url = str(tmp_path / "store")
    context = TaskContext.from_env({TASK_ENV: _context(url, tmp_path / "dir", nodes=nodes)})
    runtime = context.runtime(ranks=context.ranks(environ))
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    with pytest.raises(CheckpointConfigError, match=says):
        runtime.save(str(src), sharded=True)
    assert runtime.save(str(src)).sharded is False


def test_the_task_context_carries_the_node(tmp_path):
    env = _context("/store", tmp_path / "dir", node=1, nodes=2)
    context = TaskContext.from_env({TASK_ENV: env})
    assert (context.node, context.nodes) == (1, 2)
    old = json.loads(env)
    del old["node"], old["nodes"]  # written by an earlier release: node 0 of 1
    context = TaskContext.from_env({TASK_ENV: json.dumps(old)})
    assert (context.node, context.nodes) == (0, 1)
    for bad, says in [({"node": 2, "nodes": 2}, "not below"), ({"nodes": 0}, "'nodes' is 0")]:
        with pytest.raises(CheckpointConfigError, match=says):
            TaskContext.from_env({TASK_ENV: json.dumps(dict(old, **bad))})


def test_blocking_false_with_sharded_is_refused(tmp_path):
    context = TaskContext.from_env({TASK_ENV: _context(str(tmp_path / "s"), tmp_path / "dir")})
    with pytest.raises(CheckpointConfigError, match="sharded=True, blocking=False"):
        context.runtime().save(sharded=True, blocking=False)


def test_a_node_with_no_part_of_a_sharded_checkpoint_loads_nothing_and_says_so(tmp_path):
    """A checkpoint sharded by a 2-node gang, loaded by ``eager`` into a 3-node gang (review
    r11): node 2 has no part, so it loads nothing (it used to "load" an empty directory),
    logs why and how to re-shard; an explicit load of it raises CheckpointNotFound."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointNotFound
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build

    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    parts = [write_tree(tmp_path / ("n%d" % n), {"shard.pt": b"node %d" % n}) for n in range(2)]
    saved: dict = {}

    def node(n):
        saved[n] = store.save_gang(
            str(parts[n]), SCOPE, name="mfchckpt", metadata={}, latest=True,
            participant=gang.Participant("node", n, 2), number=0, timeout=120,
        )  # fmt: skip

    threads = [threading.Thread(target=node, args=(n,)) for n in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    key = saved[0].key
    later = make_scope(step="train", task="8", run="200")
    logs: list = []
    loaded = {}
    for n in (1, 2):
        ranks = Ranks.of_step(n, 3, gang=True)
        directory = tmp_path / ("new-%d" % n)
        directory.mkdir()
        runtime = build(store, later, str(directory), ranks=ranks, log=logs.append).runtime
        runtime.load_initial(store.resolve("eager", later, position=ranks.position))
        loaded[n] = (runtime.is_loaded, sorted(os.listdir(directory)))
    assert loaded == {1: (True, ["shard.pt"]), 2: (False, [])}
    [warning] = [m for m in logs if "Warning" in m]
    assert "Checkpoint %s is sharded in 2 parts (one per node)" % key in warning
    assert "no part for this process (node 2)" in warning
    assert "load(ref, all_ranks=True)" in warning
    with pytest.raises(CheckpointNotFound, match="no part for this process \\(node 2\\)"):
        runtime.load(key, str(tmp_path / "explicit"))
    every = runtime.load(key, str(tmp_path / "every"), all_ranks=True)
    assert sorted(os.listdir(every)) == ["rank-0", "rank-1"]


def test_rank_0_off_node_0_warns_once_what_to_do(tmp_path):
    """torchrun's dynamic (c10d) rendezvous can put RANK 0 on node 1 (review r8): its
    Checkpoint() says once that its saves are node 1's, not the gang's, and how to start
    torchrun; ranks where they belong say nothing."""
    url = str(tmp_path / "store")
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1")
    env[TASK_ENV] = _context(url, tmp_path / "dir", node=1, nodes=2)
    code = "from metaflow import Checkpoint\nCheckpoint()\nCheckpoint()\nprint('made')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=str(REPO), capture_output=True, text=True
    )
    assert "made" in done.stdout, done.stderr
    assert done.stderr.count("[@checkpoint] Warning: this process has RANK=0 but is node 1") == 1
    assert "--node_rank=<current.parallel.node_index>" in done.stderr
    quiet = [
        (1, {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}),
        (0, {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}),
        (1, {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}),
    ]
    for node, variables in quiet:
        assert Ranks.of_subprocess(node, 2, variables).warning is None


# ------------------------------------------------------------------------------ aliases, client
def test_last_and_best_in_a_task_follow_the_writers_rule(tmp_path, monkeypatch):
    """``load("last")``/``"best:<m>"`` pick what the process would load on retry: node 1's own
    when it saved any, else rank 0's; ``list()`` still shows every writer, with ``writer``."""
    from metaflow import Checkpoint

    url = str(tmp_path / "store")
    env = _context(url, tmp_path / "dir", nodes=3)

    def runtime(node):
        context = TaskContext.from_env({TASK_ENV: env})
        return context.runtime(ranks=Ranks.of_step(node, 3, gang=True))

    saved = {}
    for node, loss in ((0, 0.5), (1, 0.9), (1, 0.7), (0, 0.1)):
        src = write_tree(tmp_path / ("s%d%s" % (node, loss)), {"who.txt": b"node %d" % node})
        saved[(node, loss)] = runtime(node).save(str(src), metadata={"loss": loss})
    assert saved[(1, 0.9)].writer == {"node": 1, "local": 0} and not saved[(1, 0.9)].sharded
    assert saved[(0, 0.5)].writer == {"node": 0, "local": 0}
    picks = {}
    for node in (0, 1, 2):
        rt = runtime(node)
        picks[node] = [
            Path(
                rt.load(alias, str(tmp_path / ("o%d%s" % (node, alias[:4])))), "who.txt"
            ).read_text()
            for alias in ("last", "best:loss")
        ]
    assert picks == {
        0: ["node 0", "node 0"],  # never node 1's, though node 1's loss 0.7 beats 0.5
        1: ["node 1", "node 1"],  # its own: newest 0.7 is also its best
        2: ["node 0", "node 0"],  # none of its own: rank 0's
    }
    assert len(runtime(2).list()) == 4
    # Checkpoint() in a subprocess of node 1 (LOCAL_RANK unset): node 1's leader.
    monkeypatch.setenv(TASK_ENV, _context(url, tmp_path / "dir", node=1, nodes=3))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert Checkpoint().get("last").key == saved[(1, 0.7)].key


def test_sharded_saves_outside_a_task_are_refused(tmp_path, monkeypatch):
    from metaflow import Checkpoint

    monkeypatch.delenv(TASK_ENV, raising=False)
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    with pytest.raises(CheckpointConfigError, match="named checkpoint has one writer"):
        Checkpoint(root=str(tmp_path / "store")).save(str(src), name="model", sharded=True)


# ------------------------------------------------------------------------------ helpers
def _until(condition, proc=None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail("the participant ended early:\n%s\n%s" % proc.communicate())
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.02)
