"""``@checkpoint(expire_after_days=N)`` in a running task: after each save, the task's
checkpoints older than N days by the store's clock are pruned, the newest kept; a task whose
wall clock is 10 days ahead or behind (``tests/clockskew``) decides the same."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .flowrun import FLOWS, run_flow, run_subprocess

pytestmark = pytest.mark.flow

CLOCKSKEW = str(Path(__file__).resolve().parents[1] / "clockskew")
DAY = 86400


@pytest.mark.parametrize("skew_days", [0, 10, -10])
def test_a_task_prunes_what_expired_by_the_stores_clock(flow_env, skew_days):
    env, tmp = flow_env
    if skew_days:
        env = {**env, "PYTHONPATH": CLOCKSKEW, "MFCKPT_TEST_CLOCK_SKEW_S": str(skew_days * DAY)}
    result = run_flow(FLOWS / "expire_flow.py", env, tmp)
    start = result.run["start"].task
    saved = start.data.saved
    # Saves 0 and 1 were dated 8 days back: each went at the next save. Save 2 is fresh and
    # stays, though this process's clock (10 days ahead) would call it 10 days old, and save
    # 0 went, though a clock 10 days behind would call it 2 days in the future.
    assert start.data.left == sorted(saved[2:])
    # A child process of the task (METAFLOW_CHECKPOINT_TASK) applies the same rule.
    assert start.data.child_left == sorted(start.data.child_saved[1:])
    if skew_days:  # the skew did reach the task
        assert abs(start.data.clock - time.time() - skew_days * DAY) < 600


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_expire_after_days_fails_the_run_before_any_task(flow_env, value):
    env, tmp = flow_env
    proc = run_subprocess(
        [
            FLOWS / "expire_flow.py",
            "--no-pylint",
            "run",
            "--with",
            "checkpoint:expire_after_days=" + value,
        ],
        env,
        tmp,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "expire_after_days=" in out and "must be a positive number of days" in out, out[-2000:]
    assert "Task is starting" not in out
