"""A retry whose task's checkpoints cannot be listed fails with the storage error; it never
silently starts from scratch (issue 11, listings fail closed)."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_flow

pytestmark = pytest.mark.flow


def test_retry_with_unreadable_task_directory_fails_instead_of_starting_fresh(flow_env):
    """Attempt 0 saves, then its task's manifests directory becomes unreadable (replaced by a
    symlink loop: every read fails, for root too) and the attempt fails.  Attempt 1's load
    policy must report the listing error naming the directory; before, the unreadable
    directory was skipped and the retry started without its checkpoint."""
    env, tmp = flow_env
    result = run_flow(FLOWS / "unreadable_retry_flow.py", env, tmp, expect="failed")
    retry = [line.msg for line in result.lines("start")]
    assert "attempt 1 started, loaded=False" not in retry, result.describe()
    assert "Checkpoint storage error:" in retry, result.describe()
    error = next(msg for msg in retry if msg.startswith("list of "))
    assert "/UnreadableRetryFlow/start/_/%s/" % result.run.id in error
    assert "Too many levels of symbolic links" in error
    assert "A listing never skips what it cannot read" in error
