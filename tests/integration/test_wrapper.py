"""A ``@checkpoint`` task under the ``bash -c`` wrapper Metaflow runs remote steps in.

``@kubernetes`` and ``@batch`` (``metaflow/plugins/kubernetes/kubernetes.py:Kubernetes._command``,
``metaflow/plugins/aws/batch/batch.py:Batch._command``) start a container whose command is
``bash -c "true && mkdir -p <logs> && <exports> && <package setup> && (<bootstrap> && python
flow.py ... step ...) 1>> >(mflog tee) 2>> >(mflog tee >&2); c=$?; <save logs>; exit $c"``: bash is
PID 1 of the container's pid namespace and the task is its grandchild.  Here a real step command
of a real flow runs in that shape (the wrapper expression from ``metaflow.mflog
.bash_capture_logs``, quoted with ``shlex.split('bash -c "%s"' % ...)`` as Metaflow does) as PID 1
of a new pid namespace (``unshare --pid --fork``), and as a plain child process (where a runner
such as Argo's executor is PID 1 and passes signals on to bash), and:

* SIGTERM to the wrapper (what the kubelet or ``docker stop`` sends the container) never reaches
  the task's handler: bash as PID 1, without a handler for it, never even receives it; bash as a
  child dies of it and the task goes on, unsignalled;
* with ``@checkpoint(preemption="aws")`` a spot notice from a fake metadata service is caught by
  the task itself and its ``save_on_interrupt`` checkpoint committed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fake_metadata import FakeMetadata
from metaflow.mflog import bash_capture_logs

from .flowrun import FLOWS, local_root, local_store, run_subprocess, subprocess_env

pytestmark = pytest.mark.flow

FLOW = FLOWS / "sigint_wrapper_flow.py"


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "the task ended early: %r" % (proc.communicate(),)
        assert time.monotonic() < end, "%s never appeared" % path
        time.sleep(0.05)


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _wrapper_pid(launcher: subprocess.Popen, namespaced: bool) -> int:
    """The bash wrapper's pid as seen from here: ``unshare``'s child, else the launcher."""
    if not namespaced:
        return launcher.pid
    children = Path("/proc/%d/task/%d/children" % (launcher.pid, launcher.pid))
    pids = children.read_text().split()
    assert len(pids) == 1, pids
    return int(pids[0])


@pytest.mark.parametrize("namespaced", [True, False], ids=["bash-as-pid-1", "bash-as-a-child"])
def test_sigterm_to_the_wrapper_never_reaches_the_task_but_a_preemption_notice_does(
    flow_env, namespaced
):
    if namespaced and not _can_unshare():
        pytest.skip("unshare --pid --fork is not allowed here")
    env, tmp = flow_env
    run_id = "wrapped-%s" % uuid.uuid4().hex[:8]
    ready, go, notice = tmp / "ready", tmp / "go", tmp / "notice"
    init = run_subprocess(
        [FLOW, "--no-pylint", "init", "--run-id", run_id, "--task-id", "params"], env, tmp
    )
    assert init.returncode == 0, init.stderr[-3000:]
    step = " ".join(
        [sys.executable, str(FLOW), "--no-pylint", "step", "start", "--run-id", run_id]
        + ["--task-id", "1", "--input-paths", "%s/_parameters/params" % run_id]
        + ["--retry-count", "0", "--max-user-code-retries", "0"]
    )
    logs = tmp / "logs"
    cmd_str = "true && mkdir -p %s && %s; " % (logs, bash_capture_logs(step))
    cmd_str += "c=$?; exit $c"
    command = shlex.split('bash -c "%s"' % cmd_str)  # as Kubernetes._command / Batch._command
    with FakeMetadata("aws", notice_file=str(notice)) as fake:
        task_env = dict(
            env,
            READY_FILE=str(ready),
            GO_FILE=str(go),
            PREEMPTION_NOTICE_FILE=str(notice),
            MFLOG_STDOUT=str(logs / "task.stdout.log"),
            MFLOG_STDERR=str(logs / "task.stderr.log"),
            METAFLOW_CHECKPOINT_PREEMPTION_ENDPOINT=fake.url,
            METAFLOW_CHECKPOINT_PREEMPTION_POLL_SECONDS="0.2",
        )
        launcher = subprocess.Popen(
            (["unshare", "--pid", "--fork"] if namespaced else []) + command,
            env=subprocess_env(task_env),
            cwd=str(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for(ready, launcher)
            os.kill(_wrapper_pid(launcher, namespaced), signal.SIGTERM)
            go.touch()
            out, err = launcher.communicate(timeout=120)
        finally:
            if launcher.poll() is None:
                launcher.kill()
        assert fake.refused == 0
    assert launcher.returncode != 0, (out[-3000:], err[-3000:])  # the notice ended the step
    assert not notice.exists()  # announced
    store = local_store(local_root(tmp))
    headers = store.headers("")
    assert len(headers) == 1, [h.key for h in headers]  # nothing was saved in phase 1
    manifest = store.read(headers[0].key)
    assert manifest.metadata == {"reason": "interrupted", "signal": "SIGTERM"}
    target = tmp / "loaded"
    store.load(manifest, str(target))
    assert (target / "state.txt").read_text() == "interrupted in phase 2"
