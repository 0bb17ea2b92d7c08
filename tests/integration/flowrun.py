"""Running test flows in isolation and reading what a user would see.

Flows run with ``metaflow.Runner`` (or a plain subprocess) in a temp dir with their own
Metaflow home, datastore, metadata and user.  ``Runner`` merges its ``env`` into this process's
``os.environ``; :func:`run_flow` builds the Runner while ``METAFLOW_*`` and user-name variables of
this process are hidden, so nothing leaks from the test process (or from another test) into a
flow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import step_prefix
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

REPO = Path(__file__).resolve().parents[2]

#: Start of a client probe script run in a subprocess: ``attempt(label, fn)`` records what ``fn``
#: returns, or the Metaflow exception it raises, in ``out`` (printed as JSON by the script).
PROBE_PRELUDE = """\
import json, os, sys
from metaflow import Checkpoint, namespace
from metaflow.exception import MetaflowException

out = {}
def attempt(label, fn):
    try:
        out[label] = fn()
    except MetaflowException as exc:
        out[label] = {"error": type(exc).__name__, "message": exc.message}

"""
FLOWS = REPO / "tests" / "flows"
EXAMPLES = REPO / "examples"

#: Variables of the test process that must never reach a flow unless a test sets them.
_USER_VARS = ("USER", "USERNAME", "LOGNAME", "SUDO_USER")

# "2024-01-01 10:00:00.000 [123/step/4 (pid 99)] message"
_TASK_LINE = re.compile(
    r"\[(?P<run>[^/\]\s]+)/(?P<step>[^/\]\s]+)/(?P<task>[^\s\]]+) \(pid (?P<pid>\d+)\)\] ?"
    r"(?P<msg>.*)$"
)


def _scrubbed(key: str) -> bool:
    return key.startswith("METAFLOW_") or key in _USER_VARS


@contextmanager
def hidden_metaflow_environ():
    """Temporarily remove ``METAFLOW_*`` and user-name variables from ``os.environ``."""
    saved = {k: v for k, v in os.environ.items() if _scrubbed(k)}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def subprocess_env(env: dict) -> dict:
    """A complete environment for a subprocess: this process's minus Metaflow/user vars, + env."""
    out = {k: v for k, v in os.environ.items() if not _scrubbed(k)}
    out.update(env)
    return out


@dataclass
class TaskLine:
    run: str
    step: str
    task: str
    pid: int
    msg: str


@dataclass
class FlowResult:
    """What a run produced: status, the client ``Run`` and the launcher's output."""

    status: str
    run: Any
    stdout: str
    stderr: str

    @property
    def id(self) -> str:
        return self.run.id

    def lines(self, step: str) -> list[TaskLine]:
        """Task output lines of ``step`` in order (all tasks, all attempts)."""
        out = []
        for line in self.stdout.splitlines():
            m = _TASK_LINE.search(line)
            if m and m.group("step") == step:
                out.append(
                    TaskLine(m["run"], m["step"], m["task"], int(m["pid"]), m["msg"].rstrip())
                )
        return out

    def checkpoint_log(self, step: str, task: Optional[str] = None) -> list[str]:
        """The decorator's ``[@checkpoint]`` lines of ``step`` (one per attempt), in order."""
        return [
            line.msg
            for line in self.lines(step)
            if line.msg.startswith("[@checkpoint]") and (task is None or line.task == task)
        ]

    def describe(self) -> str:
        return "status=%s\n--- stdout (tail)\n%s\n--- stderr (tail)\n%s" % (
            self.status,
            self.stdout[-4000:],
            self.stderr[-4000:],
        )


def run_flow(
    flow_file: os.PathLike | str,
    env: dict,
    cwd: os.PathLike | str,
    *,
    resume: Optional[str] = None,
    expect: Optional[str] = "successful",
    run_kwargs: Optional[dict] = None,
    **top_level: Any,
) -> FlowResult:
    """Run (or ``resume`` from ``resume``, an origin run id) a flow with ``metaflow.Runner``.

    ``top_level`` are options before the command (``datastore="s3"``, ``datastore_root=...``).
    When ``expect`` is given the run's status must be that, else the output is shown.
    """
    from metaflow import Runner

    with hidden_metaflow_environ():
        runner = Runner(
            str(flow_file), show_output=False, env=env, cwd=str(cwd), pylint=False, **top_level
        )
    with runner as r:
        if resume is None:
            res = r.run(**(run_kwargs or {}))
        else:
            res = r.resume(origin_run_id=resume, **(run_kwargs or {}))
        result = FlowResult(res.status, res.run, res.stdout, res.stderr)
    if expect is not None:
        assert result.status == expect, result.describe()
    return result


def run_subprocess(args: list, env: dict, cwd: os.PathLike | str, timeout: int = 300):
    """``python <args>`` in a clean environment; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        env=subprocess_env(env),
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_probe(source: str, env: dict, tmp: Path, *args: Any) -> tuple[Any, str]:
    """Run the probe script ``source`` (built on :data:`PROBE_PRELUDE`) with ``args``; return
    the JSON it printed after ``PROBE`` and its stderr (it must exit 0)."""
    script = Path(tmp) / "probe.py"
    script.write_text(source)
    proc = run_subprocess([script, *args], env, tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE"))
    return json.loads(line[len("PROBE") :]), proc.stderr


def local_root(tmp: os.PathLike | str) -> Path:
    """Checkpoint root of the local datastore of a flow run in ``tmp``."""
    return Path(tmp) / ".metaflow" / "mf.checkpointing"


def local_store(root: os.PathLike | str) -> CheckpointStore:
    return CheckpointStore(LocalStorage(str(root)))


def stored_headers(store: CheckpointStore, namespace: str, flow: str, step: str, **filters):
    """Committed checkpoints of one step in one namespace, newest first."""
    return store.headers(step_prefix(namespace, flow, step), **filters)


def single_task(run, step: str):
    """The only task of ``step`` in ``run`` (client object)."""
    tasks = list(run[step])
    assert len(tasks) == 1, tasks
    return tasks[0]
