"""Processes started by a @checkpoint task, and code without `current`, save into the task."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_flow, single_task

pytestmark = pytest.mark.flow


def test_children_and_callbacks_save_into_the_task_and_the_retry_loads_them(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "subprocess_flow.py", env, tmp)
    task = single_task(result.run, "start")
    assert task.current_attempt == 1
    # Both children wrote their series concurrently, each saw only its own saves, as the task.
    for rank in (0, 1):
        line = next(x.msg for x in result.lines("start") if x.msg.startswith("CHILD%d" % rank))
        assert line == "CHILD%d %s [2, 1, 0]" % (rank, task.pathspec)
    # The retry loaded the newest latest=True checkpoint of attempt 0: the callback's.
    assert task.data.loaded == ["callback.txt"]
    assert task.data.info_name == "mfchckpt"
    assert task.data.listed == sorted(
        [("rank0", i, 0) for i in range(3)]
        + [("rank1", i, 0) for i in range(3)]
        + [("mfchckpt", 7, 0)]
    )
