"""Preemption watchers in real flows: a notice from a fake cloud metadata service on 127.0.0.1
interrupts the attempt, which commits its checkpoint and fails; ``@retry`` resumes from it."""

from __future__ import annotations

import pytest
from fake_metadata import FakeMetadata

from .flowrun import FLOWS, run_flow, run_subprocess, single_task

pytestmark = pytest.mark.flow

NAMES = {"aws": "AWS EC2 spot", "gcp": "GCE", "azure": "Azure"}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_preemption_notice_saves_and_the_retry_resumes(flow_env, cloud):
    env, tmp = flow_env
    notice = tmp / "notice"
    with FakeMetadata(cloud, notice_file=str(notice)) as fake:
        env = dict(
            env,
            PREEMPTION_CLOUD=cloud,
            PREEMPTION_NOTICE_FILE=str(notice),
            METAFLOW_CHECKPOINT_PREEMPTION_ENDPOINT=fake.url,
            METAFLOW_CHECKPOINT_PREEMPTION_POLL_SECONDS="0.2",
        )
        result = run_flow(FLOWS / "preemption_flow.py", env, tmp)
        assert fake.refused == 0  # every request carried the cloud's headers
        assert fake.polls >= 2  # both attempts polled; only the first saw the notice
    assert not notice.exists()  # the one-shot notice was announced
    task = single_task(result.run, "start")
    assert task.current_attempt == 1
    assert task.data.loaded == "preempted in epoch 4"
    assert task.data.listed == [["interrupted", "SIGTERM"]]
    log = [line.msg for line in result.lines("start")]
    notices = [i for i, m in enumerate(log) if "Preemption notice from %s" % NAMES[cloud] in m]
    received = [i for i, m in enumerate(log) if "Received SIGTERM: committing" in m]
    assert len(notices) == 1 and received and notices[0] < received[0], log


def test_an_unknown_cloud_fails_the_run_before_any_task(flow_env):
    env, tmp = flow_env
    proc = run_subprocess(
        [FLOWS / "preemption_flow.py", "--no-pylint", "run"],
        dict(env, PREEMPTION_CLOUD="ec2"),
        tmp,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Step 'start': @checkpoint(preemption='ec2') is not a cloud" in output, output
    assert "'aws', 'gcp', 'azure'" in output
    assert "Task is starting" not in output
