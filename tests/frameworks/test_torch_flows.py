"""Acceptance: a flow that crashes mid-training and resumes on @retry ends bitwise identical to
an uninterrupted run of the same flow; the example flow runs as written."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("numpy")

import torch  # noqa: E402
from integration.flowrun import EXAMPLES, FLOWS, run_flow, single_task  # noqa: E402

pytestmark = pytest.mark.flow


@pytest.fixture(autouse=True)
def _client_namespace():
    """Results are read through Runner's Run objects; keep the in-process client out of the
    test process's user namespace."""
    from metaflow import namespace

    namespace(None)
    yield


def _assert_bitwise(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), "%s differs" % where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_bitwise(a[k], b[k], "%s.%s" % (where, k))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise(x, y, "%s[%d]" % (where, i))
    else:
        assert a == b, (where, a, b)


def test_crash_and_retry_ends_bitwise_identical_to_an_uninterrupted_run(flow_env):
    env, tmp = flow_env
    flow = FLOWS / "torch_resume_flow.py"
    straight = run_flow(flow, env, tmp)
    # Saves at steps 4 and 8; the crash after step 6 loses steps 5-6, which the retry redoes.
    crashed = run_flow(flow, env, tmp, run_kwargs={"crash_after": 6})

    s_task, c_task = single_task(straight.run, "start"), single_task(crashed.run, "start")
    assert s_task.current_attempt == 0 and s_task.data.resumed_at is None
    assert c_task.current_attempt == 1 and c_task.data.resumed_at == 4
    s, c = s_task.data, c_task.data
    assert len(s.model_state) == 4  # two Linear layers: weight and bias each
    for name in ("model_state", "optimizer_state", "scheduler_state", "scaler_state"):
        _assert_bitwise(getattr(c, name), getattr(s, name), name)
    assert c.losses == s.losses and len(s.losses) == 10


def test_torch_state_demo_example_runs_as_written(flow_env):
    env, tmp = flow_env
    result = run_flow(EXAMPLES / "torch_state_demo.py", env, tmp)
    task = single_task(result.run, "train")
    assert task.current_attempt == 1
    messages = [line.msg for line in result.lines("train")]
    assert any(m.startswith("Resumed at step 6 ") for m in messages), messages
    assert result.run.data.final_step == 12
    assert result.run.data.resumed_at == 6
