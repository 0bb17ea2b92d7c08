"""The task layer's parts: signal handling owning its state, the session's start and end, the
settings read once.

Signals are real (the process sends them to itself while a store write is in progress); saves go
to real local stores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from metaflow import metaflow_config

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import is_manifest_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointInterrupted,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (
    TaskSettings,
    build,
    build_runtime,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
    DIRECTORY_ENV,
    TASK_ENV,
    TaskContext,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.ranks import Ranks
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

from .helpers import make_scope, options

SETTINGS = TaskSettings(async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0)


def _parts_saving_epoch_3(tmp_path, storage, gang: bool):
    """A task's parts on ``storage`` whose directory holds ``state.txt`` ("epoch 3"); a
    one-rank gang when ``gang`` (whose saves are then sharded)."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "state.txt").write_text("epoch 3")
    return build(
        CheckpointStore(storage, options()),
        make_scope(),
        str(directory),
        settings=SETTINGS,
        log=lambda m: None,
        ranks=Ranks.of_step(0, 1, gang=True) if gang else None,
    )


class SignalDuringCommit(LocalStorage):
    """A local store that sends ``signum`` to this process while it writes the first manifest,
    i.e. in the middle of a blocking save, before it is committed."""

    def __init__(self, root: str, signum: int):
        super().__init__(root)
        self.signum = signum
        self.sent = False

    def _put_bytes(self, key, data):
        if is_manifest_key(key) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        super()._put_bytes(key, data)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("gang", [False, True], ids=["save", "gang-save"])
def test_a_signal_during_a_blocking_save_is_handled_right_after_it_commits(tmp_path, sig, gang):
    """The save in progress commits; then the callbacks run and the task stops with
    CheckpointInterrupted.  In a @parallel rank too (a gang save used to swallow the signal)."""
    storage = SignalDuringCommit(str(tmp_path / "store"), sig)
    parts = _parts_saving_epoch_3(tmp_path, storage, gang)
    calls: list[str] = []
    parts.runtime.on_interrupt(lambda: calls.append("callback"))
    before = signal.getsignal(sig)
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted, match=signal.Signals(sig).name):
            parts.runtime.save(metadata={"epoch": 3}, sharded=gang)
        assert storage.sent and calls == ["callback"]
        [ref] = parts.runtime.list()  # committed before the task stopped
        assert ref.metadata == {"epoch": 3}
        parts.interrupts.handle(sig)  # a further signal: ignored, no second stop
        assert calls == ["callback"]
    finally:
        parts.interrupts.restore()
    assert signal.getsignal(sig) is before


class SignalThenFail(SignalDuringCommit):
    """Sends ``signum`` while writing the first manifest, then fails that write: the save in
    progress when the signal arrives fails (a full disk, a store that went away)."""

    def _put_bytes(self, key, data):
        if is_manifest_key(key) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
            raise StorageError("disk full", key=key)
        super()._put_bytes(key, data)


@pytest.mark.parametrize("gang", [False, True], ids=["save", "gang-save"])
def test_a_signal_during_a_blocking_save_that_fails_still_stops_the_task(tmp_path, gang):
    """The deferred signal is delivered even when the save it waited for fails: user code that
    catches the save's error (StorageError) must not train on until SIGKILL.  The task stops
    with CheckpointInterrupted, chained from the save's error and naming it."""
    storage = SignalThenFail(str(tmp_path / "store"), signal.SIGTERM)
    parts = _parts_saving_epoch_3(tmp_path, storage, gang)
    calls: list[str] = []
    parts.runtime.on_interrupt(lambda: calls.append("callback"))
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted, match="SIGTERM.*failed: StorageError: disk full"):
            try:
                parts.runtime.save(metadata={"epoch": 3}, sharded=gang)
            except StorageError:  # what a training loop that retries failed saves does
                pytest.fail("the save's error hid the SIGTERM that arrived during it")
        assert storage.sent and calls == ["callback"]
        assert not parts.runtime.list()  # the failed save committed nothing
    finally:
        parts.interrupts.restore()


def test_an_interrupted_failed_save_is_chained_from_its_error(tmp_path):
    storage = SignalThenFail(str(tmp_path / "store"), signal.SIGINT)
    parts = build(
        CheckpointStore(storage, options()),
        make_scope(),
        str(tmp_path),
        settings=SETTINGS,
        log=lambda m: None,
    )
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted) as info:
            parts.runtime.save()
    finally:
        parts.interrupts.restore()
    assert isinstance(info.value.__cause__, StorageError)
    assert info.value.__cause__.message == "disk full"


def test_a_signal_during_the_final_save_after_a_failure_does_not_stop_it(tmp_path):
    """After the step failed, the task is already stopping: a signal during the failure's save
    neither interrupts it nor replaces its outcome."""
    storage = SignalDuringCommit(str(tmp_path / "store"), signal.SIGTERM)
    store = CheckpointStore(storage, options())
    logs: list[str] = []
    session = TaskSession.start(
        store,
        make_scope(),
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root=str(tmp_path / "tmp"),
        save_on_failure=True,
        settings=SETTINGS,
        log=logs.append,
    )
    try:
        Path(session.runtime.directory, "state.txt").write_text("at the failure")
        session.step_failed(ValueError("boom"))
        assert storage.sent
        assert any("Saved checkpoint" in m and "after the step failed" in m for m in logs)
        [ref] = session.runtime.list()
        assert ref.metadata["reason"] == "failure"
        assert ref.metadata["error"] == "ValueError: boom"  # type and message, as logged
    finally:
        session.end()


def test_a_session_exports_the_task_to_subprocesses_and_cleans_up_at_the_end(tmp_path):
    """Started: the directory, the models' directory and the environment a subprocess's
    ``Checkpoint()`` uses; its runtime is built by the same builder.  Ended: summaries written,
    directories and the task's environment gone, signal handlers back."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    scope = make_scope()
    before = signal.getsignal(signal.SIGTERM)
    session = TaskSession.start(
        store,
        scope,
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root=str(tmp_path / "tmp"),
        retention={"keep_last": 1},
        settings=SETTINGS,
        log=lambda m: None,
    )
    directory = session.runtime.directory
    try:
        assert os.environ[DIRECTORY_ENV] == directory
        assert Path(directory).parent == tmp_path / "tmp"
        context = TaskContext.from_env()
        assert (context.root, context.scope, context.directory) == (store.url, scope, directory)
        assert context.retention == {"keep_last": 1}
        assert signal.getsignal(signal.SIGTERM) is not before
        child = context.runtime()  # what Checkpoint() in a subprocess uses
        Path(directory, "state.txt").write_text("one")
        child.save(metadata={"by": "child"})
        Path(directory, "state.txt").write_text("two")
        mine = session.runtime.save(metadata={"by": "task"})
        assert [r.key for r in session.runtime.list()] == [mine.key]  # keep_last=1, inherited
        session.step_succeeded()
        assert not _summaries(store)
    finally:
        session.end()
    assert not Path(directory).exists()
    assert TASK_ENV not in os.environ and DIRECTORY_ENV not in os.environ
    assert signal.getsignal(signal.SIGTERM) is before
    assert _summaries(store), "the attempt's summaries are written when the task ends"


#: A task process whose end is hit by real signals: ``when`` says during what (the flush of a
#: background save, the summaries' write), ``SIGNALS`` which ones in what order.
ENDING_TASK = r"""
import os, signal, sys
from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

tmp, when, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")

class SignalsWhileEnding(LocalStorage):
    armed = False
    def _put_bytes(self, key, data):
        hit = key.endswith("/attempt-0.json") if when == "summaries" else "mfchckpt" in key
        if self.armed and hit:
            self.armed = False
            for name in names:
                os.kill(os.getpid(), getattr(signal, name))
        super()._put_bytes(key, data)

storage = SignalsWhileEnding(os.path.join(tmp, "store"))
store = CheckpointStore(storage, TransferOptions(chunk_size=1 << 16, small_size=1 << 14, workers=2))
scope = Scope(namespace="user:alice", flow="F", step="train", foreach="_", run="1", task="2",
              attempt=0)
session = TaskSession.start(
    store, scope, Resolution(None, "first attempt"), step_name="train",
    temp_dir_root=os.path.join(tmp, "tmp"),
    settings=TaskSettings(async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0),
)
with open(os.path.join(session.runtime.directory, "weights.bin"), "wb") as f:
    f.write(os.urandom(1 << 20))
storage.armed = True
if when == "flush":
    session.runtime.save(blocking=False)  # still committing when the task ends
else:
    session.runtime.save()
before = signal.getsignal(signal.SIGTERM)
session.end()
print("HANDLERS-RESTORED", signal.getsignal(signal.SIGTERM) is not before)
print("LEFT", sorted(os.listdir(os.path.join(tmp, "tmp"))))
"""


@pytest.mark.parametrize("when", ["flush", "summaries"])
@pytest.mark.parametrize("signals", ["SIGTERM", "SIGINT", "SIGINT,SIGTERM", "SIGTERM,SIGINT"])
def test_signals_while_the_task_is_ending_are_absorbed_until_cleanup_is_done(
    tmp_path, when, signals
):
    """A late Ctrl+C or SIGTERM while the task ends (committing a background save, writing the
    summaries) used to interrupt the end and leak the task's directory (GBs in /tmp).  It is
    logged, the end finishes (save committed, summaries written, directories removed), then the
    previous handlers are back."""
    proc = subprocess.run(
        [sys.executable, "-c", ENDING_TASK, str(tmp_path), when, signals],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in signals.split(","):
        assert "Received %s while the task is ending: finishing first." % name in proc.stdout
    assert "HANDLERS-RESTORED True" in proc.stdout
    assert "LEFT []" in proc.stdout  # the task's directory is gone
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    assert _summaries(store), "the attempt's summaries are written despite the signals"
    assert [o.key for o in store.storage.list("manifests/")], "the save committed"


def _summaries(store: CheckpointStore) -> list[str]:
    return [o.key for o in store.storage.list("") if o.key.endswith("/attempt-0.json")]


def test_settings_are_read_once_when_the_task_starts(tmp_path, monkeypatch):
    """A bad ``METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS`` fails the start with an error naming it
    (no store is asked later); good values reach the parts."""
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_PAUSE_POLL_SECONDS", "soon", raising=False)
    with pytest.raises(CheckpointConfigError, match="METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS"):
        TaskSettings.read()
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    with pytest.raises(CheckpointConfigError, match="PAUSE_POLL_SECONDS"):
        build_runtime(store, make_scope(), str(tmp_path))
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_PAUSE_POLL_SECONDS", "0.5", raising=False)
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_ASYNC_BUDGET", "1024", raising=False)
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_PARALLEL_TIMEOUT", None, raising=False)
    assert TaskSettings.read() == TaskSettings(
        async_budget=1024, parallel_timeout=600.0, pause_poll_seconds=0.5
    )


def test_the_context_a_subprocess_inherits_round_trips(tmp_path):
    context = TaskContext(
        root=str(tmp_path), scope=make_scope(), directory=str(tmp_path), retention={"keep_last": 2}
    )
    assert TaskContext.from_env({TASK_ENV: context.to_env()}) == context
    assert json.loads(context.to_env())["retention"] == {"keep_last": 2}
