"""Gangs and ranks as distributed code writes them (issue 13, ADR 004), under metaflow.Runner with
``num_parallel=2``: saves from one rank commit at once and every rank loads them, subprocess
ranks never cross-load, and a sharded save stops at once when a rank fails or on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from .flowrun import FLOWS, FlowResult, local_root, local_store, run_flow

pytestmark = pytest.mark.flow

#: What a gang save that waited for a rank and gave up says (the first @parallel design said
#: "... rank(s) 1 did not save their part within 600 s").
WAITED = ("did not save their part", "was not committed")


def _stored(tmp) -> list:
    """Every committed checkpoint of the run in ``tmp``, oldest first, as
    ``(name, attempt, metadata, (node, local) of its writer, file paths)``."""
    store = local_store(local_root(tmp))
    out = []
    for h in sorted(store.headers("manifests/"), key=lambda h: (h.created_ms, h.key)):
        m = store.read(h.key)
        writer = (m.position.node, m.position.local)
        out.append((m.name, m.scope.attempt, m.metadata, writer, sorted(f.path for f in m.files)))
    return out


def _key_of(tmp, **metadata) -> str:
    """The key of the one committed checkpoint whose metadata (or attempt) match."""
    store = local_store(local_root(tmp))
    attempt = metadata.pop("attempt", None)
    (key,) = [
        h.key
        for h in store.headers("manifests/")
        if (attempt is None or h.scope.attempt == attempt)
        and all(store.read(h.key).metadata.get(k) == v for k, v in metadata.items())
    ]
    return key


def _sharded(tmp) -> list:
    """Keys of the committed sharded checkpoints of the run in ``tmp``."""
    store = local_store(local_root(tmp))
    return [h.key for h in store.headers("manifests/") if store.read(h.key).sharded]


def _assert_nothing_waited(result: FlowResult) -> None:
    out = result.stdout + result.stderr
    for text in WAITED:
        assert text not in out, result.describe()


def _tasks(result: FlowResult, step: str) -> dict:
    """Tasks of a @parallel step by node index (the control task is node 0)."""
    tasks = {}
    for task in result.run[step]:
        node = int(task.id.rsplit("_node_", 1)[1]) if "_node_" in task.id else 0
        tasks[node] = task
    return tasks


def test_rank0_only_saves_from_the_step_commit_at_once_and_every_node_resumes_from_them(
    flow_env,
):
    env, tmp = flow_env
    # A save that waited for node 1 would fail after 20 s naming it (not hang the test).
    env = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT="20")
    result = run_flow(
        FLOWS / "gang_step_saves_flow.py", env, tmp, run_kwargs={"sync": str(tmp / "sync")}
    )
    by_node = result.run["join"].task.data.by_node
    _assert_nothing_waited(result)
    stored = _stored(tmp)
    epochs = [(m["epoch"], attempt) for name, attempt, m, _, _ in stored if name == "mfchckpt"]
    # Node 0 alone saved each epoch: attempt 0 up to its crash, attempt 1 from where it resumed.
    assert epochs == [(0, 0), (1, 0), (2, 1), (3, 1)]
    # Every save is a plain checkpoint of rank 0 (node 0's step): its files, no rank-<i>/ shards.
    assert {(writer, tuple(files)) for _, _, _, writer, files in stored} == {
        ((0, 0), ("state.txt",))
    }
    # Both nodes crashed once and, on the retry, loaded the same checkpoint: node 0's newest.
    assert {n: v["attempt"] for n, v in by_node.items()} == {0: 1, 1: 1}
    assert by_node[0]["loaded_key"] == by_node[1]["loaded_key"] == _key_of(tmp, epoch=1)
    assert by_node[0]["loaded_content"] == by_node[1]["loaded_content"] == "node 0 epoch 1"
    # The references say who wrote them: rank 0.
    rank0 = {"node": 0, "local": 0}
    assert [writer for _, writer in by_node[0]["saved"]] == [rank0, rank0]
    assert by_node[1]["saved"] == []
    # The final model under its own name, from node 0 after training.
    assert [(name, attempt, m) for name, attempt, m, _, _ in stored if name == "final"] == [
        ("final", 1, {"epochs": 4})
    ]
    assert by_node[0]["final"] == (_key_of(tmp, epochs=4), rank0)
    assert by_node[1]["final"] is None
    assert not list(local_store(local_root(tmp)).storage.list("parts/"))


def test_rank0_only_saves_from_torchrun_style_workers_are_loaded_by_every_node_and_worker(
    flow_env,
):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT="20")
    result = run_flow(
        FLOWS / "gang_worker_flow.py",
        env,
        tmp,
        run_kwargs={"savers": "rank0", "sync": str(tmp / "sync")},
    )
    by_node = result.run["join"].task.data.by_node
    _assert_nothing_waited(result)
    assert {n: v["attempt"] for n, v in by_node.items()} == {0: 1, 1: 1}
    # Both nodes' steps started from the same checkpoint, RANK 0's newest of attempt 0 ...
    assert by_node[0]["step"] == by_node[1]["step"]
    assert by_node[0]["step"]["key"] == _key_of(tmp, epoch=1, attempt=0)
    assert by_node[0]["step"]["content"] == "rank 0 epoch 1"
    # ... and so did both workers (node 1's worker saved nothing of its own).
    for node in (0, 1):
        worker = by_node[node]["worker"]
        assert (worker["rank"], worker["local_rank"], worker["world_size"]) == (node, 0, 2)
        assert worker["loaded"] == "rank 0 epoch 1"
    rank0 = {"node": 0, "local": 0}
    assert [writer for _, writer in by_node[0]["worker"]["saved"]] == [rank0, rank0]
    assert by_node[1]["worker"]["saved"] == []
    # Node 0's step alone saved the final model after the workers: it committed at once.
    assert by_node[0]["final"] == (_key_of(tmp, epochs=4), rank0)
    stored = _stored(tmp)
    assert [(name, m.get("epoch"), attempt, writer) for name, attempt, m, writer, _ in stored] == [
        ("mfchckpt", 0, 0, (0, 0)),
        ("mfchckpt", 1, 0, (0, 0)),
        ("mfchckpt", 2, 1, (0, 0)),
        ("mfchckpt", 3, 1, (0, 0)),
        ("final", None, 1, (0, 0)),
    ]
    # A worker's checkpoint records its torchrun ranks.
    source = local_store(local_root(tmp)).read(by_node[0]["worker"]["saved"][0][0]).source
    assert (source["rank"], source["local_rank"], source["world_size"]) == (0, 0, 2), source


def test_subprocess_ranks_never_cross_load_in_a_gang_or_in_one_task(flow_env):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT="20")
    result = run_flow(
        FLOWS / "gang_worker_flow.py",
        env,
        tmp,
        run_kwargs={"savers": "every", "sync": str(tmp / "sync")},
    )
    join = result.run["join"].task
    by_node, single = join.data.by_node, join.data.single
    _assert_nothing_waited(result)
    # @parallel, one worker per node: each worker gets its own state back, and each node's step
    # loads its own node's leader's (the worker with LOCAL_RANK 0 on that node).
    for node in (0, 1):
        assert by_node[node]["attempt"] == 1
        assert by_node[node]["worker"]["loaded"] == "rank %d epoch 1" % node
        assert by_node[node]["step"]["content"] == "rank %d epoch 1" % node
        writers = {(w["node"], w["local"]) for _, w in by_node[node]["worker"]["saved"]}
        assert writers == {(node, 0)}
    # One task running two workers (RANK 0/1, LOCAL_RANK 0/1): the same, and the step loads
    # its own writer's (node 0, local rank 0: the RANK 0 worker).
    for rank in (0, 1):
        assert single["workers"][rank]["loaded"] == "rank %d epoch 1" % rank
        writers = {(w["node"], w["local"]) for _, w in single["workers"][rank]["saved"]}
        assert writers == {(0, rank)}
    assert single["step"]["content"] == "rank 0 epoch 1"
    # Every worker's saves are recorded as its own writer.
    writers = {}
    for _, _, m, writer, _ in _stored(tmp):
        writers.setdefault(writer, set()).add(m["rank"])
    # start: (0, 0) and (0, 1); train: node 0's leader (0, 0) and node 1's leader (1, 0).
    assert writers == {(0, 0): {0}, (0, 1): {1}, (1, 0): {1}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("save_on_failure", [False, True], ids=["plain", "save_on_failure"])
def test_a_rank_failing_stops_a_sharded_save_at_once_naming_it(flow_env, save_on_failure):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT="600")
    if save_on_failure:
        env["GANG_SAVE_ON_FAILURE"] = "1"
    sync = tmp / "sync"
    sync.mkdir()
    result = run_flow(
        FLOWS / "gang_rank_fails_flow.py",
        env,
        tmp,
        expect="failed",
        run_kwargs={"sync": str(sync)},
    )
    tasks = _tasks(result, "train")
    error = tasks[0].exception
    assert error is not None, result.describe()
    # Node 0 stopped waiting because node 1 is gone, and says who and why (not the timeout).
    assert "node 1" in error.exception and "ran out of memory" in error.exception, error
    assert "600 s" not in error.exception
    assert "ran out of memory" in tasks[1].exception.exception
    stored = _stored(tmp)
    assert not _sharded(tmp)  # the sharded checkpoint was never committed with node 1 missing
    if save_on_failure:
        # Each node's failure save committed at once, as a plain checkpoint of its own writer
        # (node 1's did not wait for anyone; node 0's after its sharded save had stopped).
        saved = {writer: (name, attempt, files, m) for name, attempt, m, writer, files in stored}
        assert set(saved) == {(0, 0), (1, 0)}
        for name, attempt, files, metadata in saved.values():
            assert (name, attempt, files) == ("mfchckpt", 0, ["shard.txt"])
            assert metadata["reason"] == "failure"
        assert "node 1 ran out of memory" in saved[(1, 0)][3]["error"]
    else:
        assert stored == []


@pytest.mark.timeout(120)
def test_sigterm_during_a_gang_wait_ends_the_task_with_the_interrupt(flow_env):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT="600")
    pid_file = tmp / "node0.pid"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_flow(
                FLOWS / "gang_sigterm_flow.py",
                env,
                tmp,
                expect=None,
                run_kwargs={"pid_file": str(pid_file)},
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    parts = local_store(local_root(tmp)).storage
    deadline = time.monotonic() + 90
    pid = None
    try:
        # Node 0 is in the wait once its pid is written and its own part is stored.
        while not (pid_file.exists() and list(parts.list("parts/"))):
            assert runner.is_alive(), outcome
            assert time.monotonic() < deadline, "node 0 never started its sharded save"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        runner.join(timeout=90)
        assert not runner.is_alive(), "the run did not end after SIGTERM"
    finally:
        if runner.is_alive() and pid is not None:
            os.kill(pid, signal.SIGKILL)  # our own flow's task: never leave it waiting 600 s
    assert "error" not in outcome, outcome
    result = outcome["result"]
    assert result.status == "failed", result.describe()
    error = _tasks(result, "train")[0].exception
    assert error is not None and error.type.endswith("CheckpointInterrupted"), result.describe()
    assert "SIGTERM" in error.exception and "600 s" not in error.exception, error
    assert ".." not in error.exception, error  # one sentence, not a message glued to another
    out = result.stdout + result.stderr
    assert "Received SIGTERM" in out, result.describe()
    assert _stored(tmp) == []  # nothing sharded was committed (nor anything else)
