"""``@checkpoint(upload="each"|"end", upload_errors="fail"|"warn")`` in real flows (docs/upload.md).

The flow's store is always a different root than the local tier (``METAFLOW_CHECKPOINT_LOCAL_TIER``
under ``tmp/tierbase``), so what was uploaded and what stayed local are told apart on disk.
"""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_subprocess

pytestmark = pytest.mark.flow


@pytest.mark.parametrize(
    "attr, value, allowed",
    [("upload", "sometimes", "'each', 'end'"), ("upload_errors", "ignore", "'fail', 'warn'")],
)
def test_a_bad_upload_attribute_fails_the_run_before_any_task(flow_env, attr, value, allowed):
    env, tmp = flow_env
    with_ = "checkpoint:%s=%s" % (attr, value)
    proc = run_subprocess(
        [FLOWS / "plain_flow.py", "--no-pylint", "run", "--with", with_], env, tmp
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "@checkpoint(%s=%r) is not supported: use one of %s." % (attr, value, allowed) in output
    ), output
    assert "Traceback" not in output
    assert "Task is starting" not in output
