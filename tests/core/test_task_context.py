"""The context a ``@checkpoint`` task exports to the processes it starts
(``METAFLOW_CHECKPOINT_TASK``): read back field by field, and refused once the task has ended.

Real sessions on local stores; ``Checkpoint()`` is the public client, reading the variable as
a ``torchrun`` worker or a ``subprocess`` child does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings
from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
    TASK_ENV,
    TaskContext,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

from .helpers import make_scope, options

SETTINGS = TaskSettings(async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0)


def _context_env(tmp_path: Path, **changes) -> str:
    d = json.loads(
        TaskContext(
            root=str(tmp_path / "store"), scope=make_scope(), directory=str(tmp_path)
        ).to_env()
    )
    d.update(changes)
    return json.dumps(d)


SCOPE = make_scope().to_dict()

#: (case, value of METAFLOW_CHECKPOINT_TASK or a function of tmp_path, what the error says)
MALFORMED_CONTEXTS = [
    ("not JSON", "not json{", "is not JSON"),
    ("a JSON list", "[1, 2]", "a JSON list, not an object"),
    ("a JSON string", '"task"', "a JSON str, not an object"),
    ("no root", lambda t: _context_env(t, root=None), "field 'root' is None"),
    ("root not text", lambda t: _context_env(t, root=7), "field 'root' is 7"),
    ("no scope", lambda t: json.dumps({"root": "/x", "directory": str(t)}), "field 'scope' is"),
    ("scope a list", lambda t: _context_env(t, scope=[1]), "field 'scope' is [1]"),
    (
        "scope without flow",
        lambda t: _context_env(t, scope={k: v for k, v in SCOPE.items() if k != "flow"}),
        "scope field 'flow' is missing",
    ),
    ("empty step", lambda t: _context_env(t, scope=dict(SCOPE, step="")), "field 'step' is ''"),
    (
        "attempt not a number",
        lambda t: _context_env(t, scope=dict(SCOPE, attempt="0")),
        "'attempt' is '0'",
    ),
    ("negative attempt", lambda t: _context_env(t, scope=dict(SCOPE, attempt=-1)), "is -1"),
    ("no directory", lambda t: _context_env(t, directory=None), "field 'directory' is None"),
    ("temp dir not text", lambda t: _context_env(t, temp_dir_root=3), "'temp_dir_root' is 3"),
    ("retention a list", lambda t: _context_env(t, retention=[1]), "'retention' is [1]"),
    (
        "unknown retention rule",
        lambda t: _context_env(t, retention={"keep_forever": 1}),
        "unknown rule(s) keep_forever (known: keep_last, keep_best",
    ),
    (
        "invalid retention rule",
        lambda t: _context_env(t, retention={"keep_last": "abc"}),
        "keep_last='abc' must be a whole number",
    ),
]


@pytest.mark.parametrize(
    "value, says", [c[1:] for c in MALFORMED_CONTEXTS], ids=[c[0] for c in MALFORMED_CONTEXTS]
)
def test_a_malformed_task_context_is_a_config_error_naming_the_variable(tmp_path, value, says):
    """A malformed METAFLOW_CHECKPOINT_TASK used to raise JSONDecodeError, KeyError or
    TypeError from Checkpoint(): now one CheckpointConfigError naming the variable, what is
    wrong, and what to do."""
    raw = value(tmp_path) if callable(value) else value
    with pytest.raises(CheckpointConfigError) as info:
        TaskContext.from_env({TASK_ENV: raw})
    message = info.value.message
    assert message.startswith("METAFLOW_CHECKPOINT_TASK is malformed: ")
    assert says in message
    assert "unset it" in message


def test_a_context_whose_task_has_ended_is_refused(tmp_path):
    """The session removes the task's directory when it ends: a process that inherited the
    context (or kept its runtime) can no longer commit into the finished task."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    session = TaskSession.start(
        store,
        make_scope(),
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root=str(tmp_path / "tmp"),
        settings=SETTINGS,
        log=lambda m: None,
    )
    inherited = os.environ[TASK_ENV]
    try:
        child = TaskContext.from_env().runtime()  # made while the task runs
        Path(child.directory, "state.txt").write_text("during the task")
        child.save()
        session.step_succeeded()
    finally:
        session.end()
    with pytest.raises(CheckpointConfigError, match="has ended") as info:
        TaskContext.from_env({TASK_ENV: inherited})
    assert "TrainFlow/100/train/7" in info.value.message
    assert "Checkpoint(root=...)" in info.value.message
    src = tmp_path / "later"
    src.mkdir()
    (src / "state.txt").write_text("after the task")
    for how in ("path", "default directory"):
        with pytest.raises(CheckpointConfigError, match="has ended"):
            child.save(str(src)) if how == "path" else child.save()
        with pytest.raises(CheckpointConfigError, match="has ended"):
            child.save(str(src), blocking=False)
    assert len(store.headers(make_scope().task_prefix())) == 1  # the save made during the task


def test_checkpoint_in_a_process_outliving_its_task_refuses_and_a_root_client_works(
    tmp_path, monkeypatch
):
    """``Checkpoint()`` in a process that inherited the context of an ended task refuses (the
    save used to commit into the finished task); ``Checkpoint(root=...)`` ignores the
    context and works."""
    from metaflow import Checkpoint

    store_root = tmp_path / "store"
    gone = tmp_path / "ended-task-dir"
    context = TaskContext(root=str(store_root), scope=make_scope(), directory=str(gone))
    monkeypatch.setenv(TASK_ENV, context.to_env())
    with pytest.raises(CheckpointConfigError, match="TrainFlow/100/train/7.*has ended"):
        Checkpoint()
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    ref = Checkpoint(root=str(store_root)).save(str(model), name="resnet50")
    assert ref.name == "resnet50"
    assert not CheckpointStore(LocalStorage(str(store_root)), options()).headers(
        make_scope().task_prefix()
    ), "nothing was committed into the ended task"
    monkeypatch.setenv(TASK_ENV, "not json{")
    with pytest.raises(CheckpointConfigError, match="METAFLOW_CHECKPOINT_TASK is malformed"):
        Checkpoint()
    out = Checkpoint(root=str(store_root)).load(ref, str(tmp_path / "out"))
    assert Path(out, "model.pt").read_bytes() == b"weights"
