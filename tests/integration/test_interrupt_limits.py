"""Ctrl+C to a local run, as a terminal sends it: within Metaflow's limit, what cannot commit
in time is abandoned, never half-written, and the log says which checkpoint stays the latest.

Metaflow's local runtime (``metaflow/runtime.py:NativeRuntime.execute``, the ``KeyboardInterrupt``
branch, then ``_killall``) gives its tasks 4 to 5 s after Ctrl+C (``int(time.time()) - now < 5``
on whole seconds) and then kills them.  The run leads its own process group
(``tests/flows/sigint_limit_flow.py``), which receives SIGINT: the runtime and both ``train``
tasks at once.  ``big`` cannot save its directory in time, ``small`` can.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from .flowrun import FLOWS, FlowResult, hidden_metaflow_environ, local_root, local_store

pytestmark = pytest.mark.flow


async def _run_and_ctrl_c(env: dict, cwd, ready_dir) -> tuple[str, str, int]:
    """Start the flow with metaflow.Runner, Ctrl+C it once both tasks are ready, wait."""
    from metaflow import Runner

    with hidden_metaflow_environ():
        runner = Runner(
            str(FLOWS / "sigint_limit_flow.py"),
            show_output=False,
            env=env,
            cwd=str(cwd),
            pylint=False,
        )
    with runner:
        executing = await runner.async_run()
        pid = executing.command_obj.process.pid
        end = time.monotonic() + 180
        while len(os.listdir(ready_dir)) < 2:
            assert executing.returncode is None, executing.stdout[-3000:]
            assert time.monotonic() < end, "the tasks never got ready"
            await asyncio.sleep(0.1)
        assert os.getpgid(pid) == pid  # the run leads its own group: SIGINT reaches only it
        os.killpg(pid, signal.SIGINT)
        await executing.wait(timeout=120)
        return executing.stdout, executing.stderr, executing.returncode


def _task_lines(stdout: str, stderr: str, step: str) -> dict[str, list[str]]:
    """Output lines of ``step``'s tasks, by task id."""
    lines: dict[str, list[str]] = {}
    for line in FlowResult("failed", None, stdout, stderr).lines(step):
        lines.setdefault(line.task, []).append(line.msg)
    return lines


def test_ctrl_c_abandons_a_final_save_that_cannot_finish_and_commits_one_that_can(flow_env):
    env, tmp = flow_env
    ready = tmp / "ready"
    ready.mkdir()
    env = dict(
        env,
        READY_DIR=str(ready),
        SIGINT_OWN_GROUP="1",
        METAFLOW_CHECKPOINT_CHUNK_SIZE=str(256 << 10),
        METAFLOW_CHECKPOINT_WORKERS="4",
    )
    stdout, stderr, returncode = asyncio.run(_run_and_ctrl_c(env, tmp, ready))
    output = stdout + stderr
    assert returncode != 0
    assert "Workflow interrupted" in output, output[-3000:]
    # Both tasks ended by themselves within Metaflow's limit: none had to be killed.
    assert "Killing" not in output, output[-4000:]
    first = {size: (ready / size).read_text() for size in ("big", "small")}
    tasks = _task_lines(stdout, stderr, "train")
    by_size = {size: tasks[key.split("/")[-2]] for size, key in first.items()}  # by task id
    store = local_store(local_root(tmp))

    # big: its final save is abandoned; epoch 1 stays the latest, and the log says so twice.
    log = [m for m in by_size["big"] if m.startswith("[@checkpoint]")]
    start = next(m for m in log if "Received SIGINT" in m)
    assert "within 3 s (METAFLOW_CHECKPOINT_INTERRUPT_SECONDS)" in start
    assert "(now: %s)" % first["big"] in start
    assert any(m.startswith("[@checkpoint] Abandoned the final save on SIGINT") for m in log), log
    assert (
        "[@checkpoint] Nothing abandoned was committed: the latest checkpoint stays %s."
        % (first["big"])
        in log
    )
    big = store.headers(first["big"].rsplit("/", 1)[0] + "/")
    assert [h.key for h in big] == [first["big"]]  # nothing of the final save, ever

    # small: its final save commits in time and becomes the latest.
    log = [m for m in by_size["small"] if m.startswith("[@checkpoint]")]
    assert "(now: %s)" % first["small"] in next(m for m in log if "Received SIGINT" in m)
    saved = next(m for m in log if m.startswith("[@checkpoint] Saved checkpoint"))
    assert saved.endswith(" on SIGINT.")
    small = store.headers(first["small"].rsplit("/", 1)[0] + "/")
    assert len(small) == 2 and small[1].key == first["small"], [h.key for h in small]
    manifest = store.read(small[0].key)
    assert small[0].key in saved
    assert manifest.metadata == {"reason": "interrupted", "signal": "SIGINT"}
    store.load(manifest, str(tmp / "loaded"))
    assert (tmp / "loaded" / "state.txt").read_text() == "interrupted in epoch 2"
