"""Final saves on failure and on SIGTERM never commit an empty or unchanged directory over a
real checkpoint (one a child process saved), so the retry loads the real one."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_flow, single_task

pytestmark = pytest.mark.flow


@pytest.mark.parametrize("how", ["failure", "interrupt"])
def test_an_empty_directory_is_not_saved_over_a_childs_checkpoint(flow_env, how):
    env, tmp = flow_env
    result = run_flow(FLOWS / "final_save_flow.py", env, tmp, run_kwargs={"how": how})
    task = single_task(result.run, "start")
    assert task.current_attempt == 1
    assert task.data.files == ["state.txt"]
    assert task.data.loaded == "saved by a child in attempt 0"
    assert task.data.saved == [(0, "child")]  # no final checkpoint was committed
    why = "after the step failed" if how == "failure" else "on SIGTERM"
    skipped = [m for m in result.checkpoint_log("start") if "Skipped the final save" in m]
    assert len(skipped) == 1 and skipped[0].startswith(
        "[@checkpoint] Skipped the final save %s" % why
    )
    assert "holds no file" in skipped[0]


@pytest.mark.parametrize("how", ["failure", "interrupt"])
def test_an_unchanged_directory_is_not_saved_over_a_childs_newer_checkpoint(flow_env, how):
    env, tmp = flow_env
    result = run_flow(
        FLOWS / "final_save_flow.py", env, tmp, run_kwargs={"how": how, "case": "unchanged"}
    )
    task = single_task(result.run, "start")
    assert task.current_attempt == 2
    assert task.data.loaded == "saved by a child in attempt 1"
    assert task.data.loaded_metadata == {"by": "child"}
    # Attempt 0's final save would have repeated its own checkpoint, attempt 1's the one it
    # loaded: neither was committed.
    assert task.data.saved == [(0, "task"), (1, "child")]
    skipped = [m for m in result.checkpoint_log("start") if "Skipped the final save" in m]
    assert len(skipped) == 2
    assert all("holds exactly checkpoint" in m and "already committed" in m for m in skipped)
