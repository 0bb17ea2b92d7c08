"""The PyTorch example: a crash mid-training and a retry that resumes from the last epoch."""

from __future__ import annotations

import json

import pytest

from .flowrun import EXAMPLES, run_flow, run_subprocess, single_task

pytestmark = pytest.mark.flow

BROWSE_SCRIPT = """
import json, os, sys
import torch
from metaflow import Checkpoint, Flow
run = Flow("TrainDemoFlow").latest_run
refs = Checkpoint().list(run)
dest = Checkpoint().load(refs[0], os.path.join(sys.argv[1], "newest"))
state = torch.load(os.path.join(dest, "state.pt"), weights_only=True)
print(json.dumps({
    "run": run.id,
    "refs": [
        {"attempt": r.attempt, "epoch": r.metadata["epoch"], "loss": r.metadata["loss"],
         "created_on": r.created_on, "pathspec": r.pathspec}
        for r in refs
    ],
    "attempt0": len(Checkpoint().list(run, attempt=0)),
    "newest_state_epoch": int(state["epoch"]),
}))
"""


def test_train_demo_resumes_after_crash_and_is_browsable(flow_env):
    env, tmp = flow_env
    result = run_flow(EXAMPLES / "train_demo.py", env, tmp)
    task = single_task(result.run, "train")
    assert task.current_attempt == 1
    assert result.run.data.resumed_from_epoch == 4
    assert isinstance(result.run.data.final_loss, float)
    messages = [line.msg for line in result.lines("train")]
    assert "Resuming at epoch 4 from %s (attempt 0)" % task.pathspec in messages

    # Browse as a user would, in a fresh interpreter configured like the run.
    proc = run_subprocess(["-c", BROWSE_SCRIPT, tmp], env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["run"] == result.id
    refs = seen["refs"]
    # 8 checkpoints, newest first: epochs 7..4 by attempt 1, then 3..0 by attempt 0.
    assert [r["epoch"] for r in refs] == list(range(7, -1, -1))
    assert [r["attempt"] for r in refs] == [1] * 4 + [0] * 4
    assert [r["created_on"] for r in refs] == sorted((r["created_on"] for r in refs), reverse=True)
    assert {r["pathspec"] for r in refs} == {task.pathspec}
    assert refs[0]["loss"] == pytest.approx(result.run.data.final_loss)
    assert seen["attempt0"] == 4
    assert seen["newest_state_epoch"] == 7

    # The example's own browsing script prints the same story.
    proc = run_subprocess([EXAMPLES / "browse_demo.py"], env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "attempt 1 resumed at epoch 4" in proc.stdout

    # The notebook-style example picks the best checkpoint by loss and reads one file of it.
    proc = run_subprocess([EXAMPLES / "pick_best.py"], env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best_loss = min(r["loss"] for r in refs)
    assert "best: epoch 7, loss %.4f" % best_loss in proc.stdout
    assert "#1 epoch 7" in proc.stdout and "#3 epoch 5" in proc.stdout
    assert "state.pt holds epoch 7" in proc.stdout
    assert "['state.pt']" in proc.stdout
