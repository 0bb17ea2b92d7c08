"""Background saves, SIGTERM, saving on failure: nothing committed is lost, failures are loud."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_flow, single_task

pytestmark = pytest.mark.flow


def test_background_saves_are_snapshots_committed_in_order(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "async_flow.py", env, tmp)
    task = single_task(result.run, "start")
    assert task.data.contents == [
        "version 0",
        "version 1",
        "version 2",
        "changed after the snapshot",
    ]
    # Dated at their snapshot, the background saves order before the later blocking save.
    assert task.data.newest_first == [3, 2, 1, 0]
    # A handle stored as an artifact is stored as the reference it produced.
    assert task.data.handle_artifact.key == task.data.background_keys[0]


def test_a_failed_background_save_fails_the_task_loudly(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "async_flow.py", env, tmp, expect="failed", run_kwargs={"fail": True})
    out = result.stdout + result.stderr
    assert "1 background checkpoint save(s) failed" in out
    assert "injected: the store refuses writes" in out


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_commits_pending_and_final_saves_then_the_retry_resumes(flow_env, sig):
    env, tmp = flow_env
    result = run_flow(FLOWS / "interrupt_flow.py", env, tmp, run_kwargs={"sig": sig})
    task = single_task(result.run, "start")
    assert task.current_attempt == 1
    assert task.data.loaded == "interrupted in epoch 2"
    assert task.data.listed == [[1, None, None], [None, "interrupted", sig]]
    log = [line.msg for line in result.lines("start")]
    assert any("Received %s: committing checkpoints before stopping." % sig in m for m in log)


def test_save_on_failure_keeps_the_state_of_a_failed_attempt(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "failure_flow.py", env, tmp)
    task = single_task(result.run, "start")
    assert task.current_attempt == 1
    assert task.data.loaded == "got to 42"
    assert task.data.reason["reason"] == "failure"
    assert "boom at 42" in task.data.reason["error"]
