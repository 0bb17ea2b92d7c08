"""Within a task, the newest checkpoint is the last one saved, whatever the wall clock did.

Clock steps are injected for real by replacing the package's time source (``now_ms``, in every
module that holds it) with a clock the test moves; saves go to real local stores, and other
processes of a task are real subprocesses with their own (shifted) clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import (
    commit,
    gang,
    manifest,
    policies,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import build
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build_runtime
from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
    TASK_ENV,
    TaskContext,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.ranks import Ranks
from metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime import CheckpointRuntime

from .helpers import make_scope, options

HOUR = 3600 * 1000
DAY = 24 * HOUR
T0 = 1_750_000_000_000  # a fixed wall-clock reading (2025-06-15)


class Clock:
    """The package's time source, moved by the test."""

    def __init__(self, monkeypatch, ms: int = T0):
        self.ms = ms
        for module in (manifest, commit, gang):  # every module that holds ``now_ms``
            monkeypatch.setattr(module, "now_ms", self.now)

    def now(self) -> int:
        return self.ms

    def step(self, delta_ms: int) -> None:
        self.ms += delta_ms


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "store"


def _store(root: Path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(str(root)), options())


def _runtime(
    root: Path, tmp_path: Path, scope, gang: bool = False, **retention
) -> CheckpointRuntime:
    directory = tmp_path / ("dir-%d-%d" % (scope.attempt, len(list(tmp_path.iterdir()))))
    directory.mkdir()
    return build_runtime(
        _store(root),
        scope,
        str(directory),
        log=lambda m: None,
        retention=build(**retention),
        # A gang of one: participant 0 writes the manifest of each sharded save.
        ranks=Ranks.of_step(0, 1, gang=True) if gang else None,
    )


def _created(ref) -> int:
    return manifest.parse_key(ref.key).created_ms


def _write(runtime: CheckpointRuntime, text: str) -> None:
    Path(runtime.directory, "state.txt").write_text(text)


def _loaded_text(runtime: CheckpointRuntime) -> str:
    return Path(runtime.directory, "state.txt").read_text()


def _everyone_agrees(root: Path, runtime: CheckpointRuntime, expected_key: str) -> None:
    """Listing, load("last"), the retry's choice and the raw store order name one checkpoint."""
    scope = runtime.scope
    store = _store(root)
    assert runtime.list()[0].key == expected_key
    headers = store.headers(scope.task_prefix())
    assert headers[0].key == expected_key  # order (across tasks) agrees with the task order
    assert policies.newest(headers, within_task=True).key == expected_key
    retry = store.resolve("fresh", make_scope(attempt=scope.attempt + 1))
    assert retry.header.key == expected_key
    text = store.read(expected_key).metadata["text"]
    runtime.load("last")
    assert _loaded_text(runtime) == text


# ------------------------------------------------------------------------------ one process
def test_a_clock_step_back_between_two_saves_keeps_the_later_one_newest(root, tmp_path, clock):
    """Save, NTP steps the clock back an hour, save: the second is the newest everywhere and
    keep_last=1 keeps it (it used to delete the checkpoint save() had just returned)."""
    rt = _runtime(root, tmp_path, make_scope(), keep_last=1)
    _write(rt, "first")
    first = rt.save(metadata={"text": "first"})
    clock.step(-HOUR)
    _write(rt, "second")
    second = rt.save(metadata={"text": "second"})
    assert _created(second) > _created(first)  # the task's clock never goes back
    assert [r.key for r in rt.list()] == [second.key]  # retention kept the one just saved
    _everyone_agrees(root, rt, second.key)


def test_many_steps_back_and_forth_keep_saves_in_the_order_they_were_made(root, tmp_path, clock):
    rt = _runtime(root, tmp_path, make_scope())
    keys = []
    for i, step in enumerate([0, -HOUR, 5, -DAY, 2 * DAY, -DAY, 0, 0]):
        clock.step(step)
        _write(rt, "save %d" % i)
        keys.append(rt.save(metadata={"text": "save %d" % i}).key)
    assert [r.key for r in rt.list()] == keys[::-1]
    assert [h.key for h in _store(root).headers(rt.scope.task_prefix())] == keys[::-1]
    _everyone_agrees(root, rt, keys[-1])


def test_a_background_save_is_dated_at_its_snapshot_under_a_clock_step(root, tmp_path, clock):
    """A background snapshot, then a clock step back, then a blocking save: the blocking save
    (made after the snapshot) is the newest."""
    rt = _runtime(root, tmp_path, make_scope())
    _write(rt, "background")
    handle = rt.save(metadata={"text": "background"}, blocking=False)
    clock.step(-HOUR)
    _write(rt, "blocking")
    blocking = rt.save(metadata={"text": "blocking"})
    background = handle.wait(30)
    assert _created(background) < _created(blocking)
    _everyone_agrees(root, rt, blocking.key)


def test_a_gang_checkpoint_is_dated_by_rank_0s_task_clock(root, tmp_path, clock):
    rt = _runtime(root, tmp_path, make_scope(), gang=True)
    _write(rt, "first")
    rt.save(metadata={"text": "first"}, sharded=True)
    clock.step(-HOUR)
    _write(rt, "second")
    second = rt.save(metadata={"text": "second"}, sharded=True)
    assert second.key.split("-")[-3] == "Ls"  # a sharded checkpoint
    newest = policies.newest(_store(root).headers(rt.scope.task_prefix()))
    assert newest.key == second.key


# ------------------------------------------------------------------------------ attempts
def test_a_retry_on_a_machine_whose_clock_is_a_day_behind_saves_after_attempt_0(
    root, tmp_path, clock
):
    """Attempt 1 runs where the clock is a day behind; with keep_last=1 its saves used to sort
    below attempt 0's, so retention deleted each checkpoint attempt 1 had just saved."""
    a0 = _runtime(root, tmp_path, make_scope(attempt=0), keep_last=1)
    for i in range(3):
        clock.step(1000)
        _write(a0, "a0 %d" % i)
        a0.save(metadata={"text": "a0 %d" % i})
    clock.step(-DAY)
    # Attempt 1 starts as the decorator starts it: the load policy lists the task.
    scope1 = make_scope(attempt=1)
    a1 = _runtime(root, tmp_path, scope1, keep_last=1)
    resolution = _store(root).resolve("fresh", scope1)
    a1.load_initial(resolution)
    assert _loaded_text(a1) == "a0 2"
    saved = []
    for i in range(2):
        _write(a1, "a1 %d" % i)
        saved.append(a1.save(metadata={"text": "a1 %d" % i}))
    assert [r.key for r in a1.list()] == [saved[-1].key]
    assert _created(saved[-1]) > resolution.header.created_ms
    _everyone_agrees(root, a1, saved[-1].key)


# ------------------------------------------------------------------------------ processes
CHILD = r"""
import json, os, sys
from pathlib import Path
from metaflow_extensions.checkpointing.plugins.checkpointing.core import commit, gang, manifest

offset = int(sys.argv[1])
real = manifest.now_ms
for module in (manifest, commit, gang):
    module.now_ms = lambda: real() + offset  # this process's clock is off by `offset`

from metaflow import Checkpoint

with Checkpoint(init_dir=True) as ckpt:
    Path(ckpt.directory, "state.txt").write_text(sys.argv[2])
    ref = ckpt.save(metadata={"text": sys.argv[2]})
print(json.dumps({"key": ref.key, "created_ms": manifest.parse_key(ref.key).created_ms}))
"""


def _child_save(runtime: CheckpointRuntime, root: Path, offset_ms: int, text: str) -> dict:
    """A real process of the task (as started by its code) saves with its clock off by
    ``offset_ms`` from the real wall clock."""
    ctx = TaskContext(
        root=str(root),
        scope=runtime.scope,
        directory=runtime.directory,
        retention={"keep_last": 1},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env.update({TASK_ENV: ctx.to_env(), "USER": "tester", "METAFLOW_USER": "tester"})
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(offset_ms), text],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_subprocess_writer_whose_clock_is_behind_saves_after_the_task(root, tmp_path):
    """The task saved; a torchrun-like worker on a clock a day behind saves after it: its
    checkpoint is the newest for the listing, load("last"), the retry and retention."""
    rt = _runtime(root, tmp_path, make_scope(), keep_last=1)
    _write(rt, "task")
    task_ref = rt.save(metadata={"text": "task"})
    child = _child_save(rt, root, -DAY, "child")
    assert child["created_ms"] > _created(task_ref)
    # The child's own retention (keep_last=1, inherited) pruned the task's older checkpoint.
    assert [r.key for r in rt.list()] == [child["key"]]
    _everyone_agrees(root, rt, child["key"])


def test_retention_never_deletes_the_checkpoint_save_just_returned(root, tmp_path):
    """Another process of the task saved with a clock an hour ahead, after this process
    learned the task's dates: this process's next save sorts below it, but keep_last=1 must
    not delete what save() is returning."""
    rt = _runtime(root, tmp_path, make_scope(), keep_last=1)
    _write(rt, "first")
    rt.save(metadata={"text": "first"})
    child = _child_save(rt, root, HOUR, "ahead")
    _write(rt, "mine")
    mine = rt.save(metadata={"text": "mine"})
    listed = {r.key for r in rt.list()}
    assert mine.key in listed and child["key"] in listed
    assert _store(root).read(mine.key).metadata["text"] == "mine"  # still loadable
    # Once this process has seen the other's checkpoint, its saves date after it again.
    _write(rt, "later")
    later = rt.save(metadata={"text": "later"})
    assert _created(later) > child["created_ms"]
    assert [r.key for r in rt.list()] == [later.key]
    _everyone_agrees(root, rt, later.key)


# ------------------------------------------------------------------------------ the clock itself
def test_the_task_clock_is_strictly_increasing_and_follows_the_wall_clock_when_ahead(clock):
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.clock import TaskClock

    c = TaskClock()
    assert not c.known
    c.learn([T0 + HOUR, T0 - HOUR])
    assert c.known
    dates = [c.tick() for _ in range(3)]
    assert dates == [T0 + HOUR + 1, T0 + HOUR + 2, T0 + HOUR + 3]
    clock.step(2 * HOUR)
    assert c.tick() == T0 + 2 * HOUR  # the wall clock is ahead again: it is used as is
    c.observe([T0 + 3 * HOUR])  # another process's later checkpoint, seen in a listing
    assert c.tick() == T0 + 3 * HOUR + 1
