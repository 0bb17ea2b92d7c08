"""Cooperative pause: a request from the CLI, a task that saves and ends as paused (not retried),
and `resume` continuing from its checkpoint; also the documented example, end to end."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from .flowrun import EXAMPLES, FLOWS, run_flow, run_subprocess, subprocess_env

pytestmark = pytest.mark.flow

METAFLOW = Path(sys.executable).parent / "metaflow"


def test_pause_from_the_cli_then_resume(flow_env):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS="0.2")
    proc = subprocess.Popen(
        [sys.executable, str(FLOWS / "pause_flow.py"), "--no-pylint", "run"],
        env=subprocess_env(env),
        cwd=str(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while not list(tmp.glob("progress-*.txt")) and time.time() < deadline:
            time.sleep(0.1)
        run_id = next(tmp.glob("progress-*.txt")).stem.split("-", 1)[1]
        cli = subprocess.run(
            [str(METAFLOW), "checkpoint", "pause", "PauseFlow/%s" % run_id],
            env=subprocess_env(env),
            cwd=str(tmp),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "Pause requested for PauseFlow/%s" % run_id in cli.stdout
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "asked from the CLI" in out
    assert "This failed task will not be retried." in out
    assert out.count("Task is starting.") == 1  # one attempt of start: no retry burned

    resumed = run_flow(FLOWS / "pause_flow.py", env, tmp, resume=run_id)
    task = resumed.run["start"].task
    assert task.data.resumed_at > 0
    assert resumed.status == "successful"


def test_the_pause_resume_example_runs_as_documented(flow_env):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS="0.2")
    first = run_subprocess(
        [EXAMPLES / "pause_resume_demo.py", "--no-pylint", "run", "--pause_at", "3"], env, tmp
    )
    assert first.returncode != 0
    out = first.stdout + first.stderr
    assert "Pausing after batch" in out and "will not be retried" in out
    paused_at = int(out.split("Pausing after batch ")[1].split()[0])
    second = run_subprocess([EXAMPLES / "pause_resume_demo.py", "--no-pylint", "resume"], env, tmp)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resuming at batch %d" % paused_at in second.stdout
    assert "trained 40 batches, resumed at batch %d" % paused_at in second.stdout
