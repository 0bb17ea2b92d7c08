"""After SIGTERM/SIGINT a task's checkpointing ends within METAFLOW_CHECKPOINT_INTERRUPT_SECONDS:
what has not committed by then is abandoned, never committed later, and the log says which
checkpoint stays the latest.

Signals are real (sent to this process), stores are real local stores whose blob writes are held
on a gate: a save "cannot finish in time" because its upload is still held at the deadline.  The
abandoned save's thread is then let go, and joined, to show that nothing it does afterwards
commits anything.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from metaflow.exception import MetaflowException

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import is_manifest_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.tempnames import SNAPSHOT_PREFIX
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointInterrupted
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings, build
from metaflow_extensions.checkpointing.plugins.checkpointing.task.fence import Fence, SaveAbandoned
from metaflow_extensions.checkpointing.plugins.checkpointing.task.interrupts import Interrupts
from metaflow_extensions.checkpointing.plugins.checkpointing.task.saves import INLINE_BYTES

from .helpers import make_scope, options

SECONDS = 0.5  # the time allowed after a signal, short: the saves here are held, not slow
SETTINGS = TaskSettings(
    async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0, interrupt_seconds=SECONDS
)
#: How long a held write waits for the gate: the code before this change committed after it.
HOLD = 10
#: Bytes of a save that runs in a worker thread, which a signal's deadline can abandon
#: (a smaller one into a local store runs in the task's thread: ADR 009).
BIG = INLINE_BYTES + (44 << 10)


class GatedStorage(LocalStorage):
    """A local store whose blob writes wait for :attr:`gate` once :attr:`hold` is set.

    ``signum``, when set, is sent to this process by the first held write (a signal arriving
    in the middle of an upload).  ``calls`` records ``(thread name, operation, key)``."""

    def __init__(self, root: str):
        super().__init__(root)
        self.hold = False
        self.gate = threading.Event()
        self.held = threading.Event()  # a write is waiting at the gate
        self.signum = None
        self.calls: list[tuple[str, str, str]] = []

    def _record(self, op: str, key: str) -> None:
        self.calls.append((threading.current_thread().name, op, key))

    def _wait_at_gate(self) -> None:
        if not self.hold:
            return
        if not self.held.is_set():
            self.held.set()
            if self.signum is not None:
                os.kill(os.getpid(), self.signum)
        self.gate.wait(HOLD)

    def ingest_range(self, src, offset, length, digest, key):
        self._record("ingest", key)
        self._wait_at_gate()
        return super().ingest_range(src, offset, length, digest, key)

    def ingest_filled(self, length, fill, digest, key_for):
        # Small files packed into one blob in the kernel (local stores): the blob's key is
        # known once its bytes are staged and hashed, so it is recorded and gated there.
        def gated_key_for(hexdigest):
            key = key_for(hexdigest)
            self._record("ingest", key)
            self._wait_at_gate()
            return key

        return super().ingest_filled(length, fill, digest, gated_key_for)

    def _put_bytes(self, key, data):
        self._record("put", key)
        if key.startswith("blobs/"):
            self._wait_at_gate()
        super()._put_bytes(key, data)

    def _get_bytes(self, key, *args):
        self._record("get", key)
        return super()._get_bytes(key, *args)

    def list(self, prefix, *args, **kwargs):
        self._record("list", prefix)
        return super().list(prefix, *args, **kwargs)

    def exists(self, key):
        self._record("exists", key)
        return super().exists(key)


def _task(tmp_path: Path, save_on_interrupt: bool = False, storage_class=None, **build_args):
    """A task's parts on a gated local store (``storage_class``, default :class:`GatedStorage`);
    its directory holds state.txt ("epoch 1"); ``build_args`` go to ``build``."""
    storage = (storage_class or GatedStorage)(str(tmp_path / "store"))
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "state.txt").write_text("epoch 1")
    logs: list[str] = []
    parts = build(
        CheckpointStore(storage, options()),
        make_scope(),
        str(directory),
        settings=SETTINGS,
        log=logs.append,
        save_on_interrupt=save_on_interrupt,
        **build_args,
    )
    return parts, storage, directory, logs


def _manifests(storage: LocalStorage) -> list[str]:
    return sorted(o.key for o in storage.list("manifests/") if is_manifest_key(o.key))


def _join_threads(name: str) -> None:
    """Wait until no thread is named ``name`` (a save worker is renamed once its save ends)."""
    end = time.monotonic() + 30
    while any(t.name == name for t in threading.enumerate()):
        assert time.monotonic() < end, "a thread named %s still runs after 30 s" % name
        time.sleep(0.01)


def test_a_blocking_save_held_past_the_deadline_is_abandoned_and_never_commits(tmp_path):
    parts, storage, directory, logs = _task(tmp_path, save_on_interrupt=False)
    first = parts.runtime.save(metadata={"epoch": 1})
    (directory / "model.bin").write_bytes(os.urandom(BIG))
    storage.hold, storage.signum = True, signal.SIGTERM
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted) as info:
            parts.runtime.save(metadata={"epoch": 2})
    finally:
        parts.interrupts.restore()
    assert storage.held.is_set()
    assert "abandoned the save in progress (not committed within 0.5 s" in info.value.message
    assert isinstance(info.value.__cause__, SaveAbandoned)
    start, abandoned, stays = logs[-3:]
    assert start.startswith("[@checkpoint] Received SIGTERM: committing checkpoints")
    assert "within 0.5 s (METAFLOW_CHECKPOINT_INTERRUPT_SECONDS)" in start
    assert start.endswith("(now: %s)." % first.key)
    assert abandoned == (
        "[@checkpoint] Abandoned the save in progress: not committed within 0.5 s of SIGTERM "
        "(METAFLOW_CHECKPOINT_INTERRUPT_SECONDS); nothing of it was committed."
    )
    assert stays == (
        "[@checkpoint] Nothing abandoned was committed: the latest checkpoint stays %s." % first.key
    )
    # The abandoned save's thread is let go and runs to its end: it commits nothing.
    storage.gate.set()
    _join_threads("checkpoint-save")
    assert _manifests(storage) == [first.key]


class ThreadsOfMemory(MemoryStorage):
    """An in-memory store (not local: its requests could hang) naming the thread of each
    manifest write; ``root`` (what :func:`_task` gives a store) is not used."""

    def __init__(self, root: str):
        super().__init__()
        self.threads: list[str] = []

    def _put_bytes(self, key, data):
        if key.startswith("manifests/"):
            self.threads.append(threading.current_thread().name)
        super()._put_bytes(key, data)


def _threads_of_save(parts, storage, epoch: int) -> set:
    """Save, and return the names of the threads that wrote its manifest."""
    n = len(storage.calls)
    parts.runtime.save(metadata={"epoch": epoch})
    return {t for t, op, key in storage.calls[n:] if op == "put" and "manifests/" in key}


def _commits_then_stops(parts, storage, first) -> str:
    """Save again, the signal handlers installed, while a signal arrives: the save commits,
    then the signal stops the task.  Returns the new checkpoint's key."""
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted, match="pending saves were committed first"):
            parts.runtime.save(metadata={"epoch": 2})
    finally:
        parts.interrupts.restore()
    second = parts.saves.latest(None)
    assert second != first.key and _manifests(storage) == sorted([first.key, second])
    return second


@pytest.fixture
def no_alarm_handler():
    """SIGALRM without a Python handler, as in a step without ``@timeout``: pytest-timeout's
    (this session's) would send every save to a worker thread (``Interrupts._alone``).  The
    conftest puts it back after the test."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_a_small_save_into_a_local_store_runs_in_the_task_s_thread(tmp_path, no_alarm_handler):
    """With the signal handlers installed (as in a task), a save of at most INLINE_BYTES into
    a local store runs in the task's thread (ADR 009: it ends within milliseconds, and the
    hand-off to a worker cost 80 us of its 600); a larger one runs in a worker thread, which a
    signal's deadline can abandon."""
    parts, storage, directory, logs = _task(tmp_path)
    assert parts.interrupts.install(parts.saves)
    try:
        small = _threads_of_save(parts, storage, 1)
        (directory / "model.bin").write_bytes(os.urandom(BIG))
        large = _threads_of_save(parts, storage, 2)
    finally:
        parts.interrupts.restore()
    assert small == {"MainThread"}
    assert large == {"checkpoint-save"}
    assert len(_manifests(storage)) == 2


def test_a_small_save_into_a_store_that_is_not_local_runs_in_a_worker(tmp_path):
    """Only local disks: a request to any other store could hang past the deadline."""
    parts, storage, directory, logs = _task(tmp_path, storage_class=ThreadsOfMemory)
    assert parts.interrupts.install(parts.saves)
    try:
        parts.runtime.save(metadata={"epoch": 1})
    finally:
        parts.interrupts.restore()
    assert storage.threads == ["checkpoint-save"]


class Timeout(MetaflowException):
    """What Metaflow's ``@timeout`` raises from its SIGALRM handler (a MetaflowException)."""


def _requeue_saving(parts):
    """A SIGUSR1 handler that saves (a trainer's requeue on a SLURM signal)."""
    return lambda signum, frame: parts.runtime.save(metadata={"requeue": True})


@pytest.mark.parametrize(
    "sig, handler",
    [
        (signal.SIGALRM, lambda parts: lambda signum, frame: None),
        (signal.SIGUSR1, _requeue_saving),
        (signal.SIGTERM, lambda parts: lambda signum, frame: None),  # set after ours
    ],
    ids=["@timeout", "requeue on SIGUSR1", "SIGTERM taken over"],
)
def test_a_small_save_runs_in_a_worker_while_another_python_handler_is_set(
    tmp_path, no_alarm_handler, sig, handler
):
    """Another Python handler runs in the main thread between two bytecodes: one raising
    (``@timeout``) would cut a save running there anywhere, one saving would re-enter it (and
    wait forever on the task clock's lock the interrupted save holds).  So while one is set,
    small saves go to a worker as larger ones do (ADR 009)."""
    parts, storage, directory, logs = _task(tmp_path)
    assert parts.interrupts.install(parts.saves)
    try:
        signal.signal(sig, handler(parts))
        threads = _threads_of_save(parts, storage, 1)
    finally:
        parts.interrupts.restore()
    assert threads == {"checkpoint-save"}


def test_a_timeout_firing_during_small_saves_always_reaches_the_step(tmp_path, no_alarm_handler):
    """A SIGALRM handler raising as ``@timeout``'s does, fired by a timer every 0.2-0.8 ms
    for 1.5 s of small saves (a real signal at any point of them): every alarm reaches the
    caller as the handler's exception, never as a StorageError nor swallowed by a best-effort
    step (was, with small saves in the task's thread: 6757 of 12447 turned into StorageError,
    812 lost); no temp file is left, every checkpoint committed is one the task knows."""
    parts, storage, directory, logs = _task(tmp_path)
    assert parts.interrupts.install(parts.saves)
    armed = [False]
    fired, reached, other = [0], [0], []

    def on_alarm(signum, frame):
        if armed[0]:
            armed[0] = False
            fired[0] += 1
            raise Timeout("Step train timed out")

    # A handler that runs inside a finalizer has its exception printed and dropped by Python:
    # no garbage collection while alarms fire.
    gc.collect()
    gc.disable()
    try:
        signal.signal(signal.SIGALRM, on_alarm)
        end = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < end:
            i += 1
            (directory / "state.txt").write_text("epoch %d" % i)
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, 0.0002 + i % 7 * 0.0001)
                parts.runtime.save(metadata={"epoch": i})
            except Timeout:
                reached[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted, asserted below
                other.append(exc)
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        _join_threads("checkpoint-save")  # saves the timeout left running in their workers
    finally:
        gc.enable()
        parts.interrupts.restore()
    assert fired[0] > 0 and reached[0] == fired[0] and not other, (fired, reached, other[:3])
    root = tmp_path / "store"
    assert not [f for _, _, fs in os.walk(root) for f in fs if f.startswith(".mfckpt-tmp-")]
    assert set(_manifests(storage)) == {m.key for m in parts.saves._manifests}


def test_a_signal_during_a_small_save_is_handled_once_it_has_committed(tmp_path, no_alarm_handler):
    """SIGTERM sent while the blob of a small save (in the task's thread) is written: the
    save commits, then the signal stops the task, naming it the checkpoint to resume from."""
    parts, storage, directory, logs = _task(tmp_path, save_on_interrupt=False)
    first = parts.runtime.save(metadata={"epoch": 1})
    (directory / "state.txt").write_text("epoch 2")
    storage.hold, storage.signum = True, signal.SIGTERM
    storage.gate.set()  # sends the signal, does not wait
    _commits_then_stops(parts, storage, first)
    assert storage.held.is_set()
    assert {t for t, op, key in storage.calls if op == "ingest"} == {"MainThread"}
    assert any(line.startswith("[@checkpoint] Received SIGTERM") for line in logs), logs


def test_pending_background_saves_are_abandoned_with_their_snapshots(tmp_path):
    parts, storage, directory, logs = _task(tmp_path, save_on_interrupt=False)
    first = parts.runtime.save(metadata={"epoch": 1})
    storage.hold = True
    (directory / "model.bin").write_bytes(os.urandom(BIG))
    running = parts.runtime.save(metadata={"epoch": 2}, blocking=False)
    storage.held.wait(HOLD)  # the first background save is uploading, held at the gate
    queued = parts.runtime.save(metadata={"epoch": 3}, blocking=False)
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        parts.interrupts.restore()
    for handle in (running, queued):
        assert handle.done() and isinstance(handle.exception(), SaveAbandoned)
        assert "not committed within 0.5 s of SIGINT" in handle.exception().message
    assert "abandoned the background save of %s" % directory in info.value.message
    assert [m for m in logs if m.startswith("[@checkpoint] Abandoned the background save")]
    assert logs[-1].endswith("the latest checkpoint stays %s." % first.key)
    snapshots = [p for p in os.listdir(tmp_path) if p.startswith(SNAPSHOT_PREFIX)]
    assert snapshots == []  # removed at once: the exiting process must not leak them
    # Let the held upload go; a later save queued behind it shows the worker moved on.
    storage.gate.set()
    later = parts.runtime.save(metadata={"epoch": 4}, blocking=False)
    with pytest.raises(SaveAbandoned):  # after the deadline a new save does not even start
        later.wait(30)
    assert _manifests(storage) == [first.key]


def test_the_final_save_starts_before_any_read_or_listing(tmp_path):
    """The save on a signal uploads first; what it is compared with (the checkpoint loaded at
    start, the task's newest) is read right before its commit, and the listing that names the
    checkpoint staying latest runs aside (was: a read and a listing before the upload)."""
    parts, storage, directory, logs = _task(tmp_path, save_on_interrupt=True)
    loaded = parts.runtime.save(metadata={"epoch": 1})
    parts.saves.note_loaded(loaded.key)
    (directory / "state.txt").write_text("interrupted in epoch 2")
    storage.calls.clear()
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted, match="saved checkpoint"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        parts.interrupts.restore()
    save_calls = [(op, key) for thread, op, key in storage.calls if thread != "checkpoint-latest"]
    first_op, first_key = save_calls[0]
    assert first_key.startswith("blobs/"), save_calls[:5]  # the upload came first
    assert any(m.startswith("[@checkpoint] Saved checkpoint") for m in logs)


def test_a_manifest_write_in_flight_at_the_deadline_is_never_reported_abandoned(tmp_path):
    """The deadline and the commit race: while the manifest write is in flight the save is
    not called abandoned (the log says it may have committed), and once it is called
    abandoned its manifest is never written."""
    storage = GatedStorage(str(tmp_path / "store"))
    store = CheckpointStore(storage, options())
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a.txt").write_text("a")
    interrupts = Interrupts(seconds=SECONDS)
    writing, release = threading.Event(), threading.Event()
    put = storage._put_bytes

    def held_manifest_write(key, data):
        if is_manifest_key(key):
            writing.set()
            release.wait(HOLD)
        put(key, data)

    storage._put_bytes = held_manifest_write
    fence = Fence()
    saver = threading.Thread(
        target=lambda: fence.commit(
            lambda **h: store.save(str(tmp_path / "ckpt"), make_scope(), **h)
        )
    )
    saver.start()
    assert writing.wait(HOLD)
    assert fence.abandon(interrupts.abandoned_error("the save"), grace=0.1) == Fence.COMMITTING
    error = interrupts.abandoned_error("the save", may_have_committed=True)
    assert "it may have committed" in error.message
    release.set()
    saver.join(30)
    assert len(_manifests(storage)) == 1  # it did commit: the log did not say otherwise
    assert fence.abandon(interrupts.abandoned_error("the save")) == Fence.COMMITTED


#: A task whose end waits for a background save held at the gate when SIGINT arrives.
ENDING_TASK = r"""
import os, signal, sys, threading, time
from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession

tmp = sys.argv[1]
gate = threading.Event()

def in_the_ends_flush():
    frames = sys._current_frames()[threading.main_thread().ident]
    while frames is not None:
        if frames.f_code.co_name == "wait_all":
            return True
        frames = frames.f_back
    return False

class HeldWhileEnding(LocalStorage):
    armed = False
    def ingest_range(self, *args):
        if self.armed:
            self.armed = False
            while not in_the_ends_flush():  # the main thread is waiting for this save
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
        if not gate.is_set():
            gate.wait(10)
        return super().ingest_range(*args)

storage = HeldWhileEnding(os.path.join(tmp, "store"))
store = CheckpointStore(storage, TransferOptions(chunk_size=1 << 16, small_size=1 << 14, workers=2))
scope = Scope(namespace="user:alice", flow="F", step="train", foreach="_", run="1", task="2",
              attempt=0)
session = TaskSession.start(
    store, scope, Resolution(None, "first attempt"), step_name="train",
    temp_dir_root=os.path.join(tmp, "tmp"), log=lambda m: print(m, flush=True),
    settings=TaskSettings(async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0,
                          interrupt_seconds=0.5),
)
with open(os.path.join(session.runtime.directory, "weights.bin"), "wb") as f:
    f.write(os.urandom(1 << 20))
storage.armed = True
handle = session.runtime.save(blocking=False)
session.end()
print("HANDLE", type(handle.exception()).__name__)
print("LEFT", sorted(os.listdir(os.path.join(tmp, "tmp"))))
gate.set()  # the abandoned upload goes on: it must commit nothing, up to the process's exit
"""


def test_a_signal_while_the_task_ends_bounds_its_wait_for_background_saves(tmp_path):
    """A Ctrl+C while the task's end waits for a background save is absorbed (the end goes on)
    but its time counts: the save is abandoned at the deadline, the end finishes (summaries,
    directories), and the abandoned save never commits (was: the end waited for the upload)."""
    proc = subprocess.run(
        [sys.executable, "-c", ENDING_TASK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (
        "Received SIGINT while the task is ending: finishing first. Saves not committed "
        "within 0.5 s (METAFLOW_CHECKPOINT_INTERRUPT_SECONDS) are abandoned." in out
    ), out
    assert "[@checkpoint] Abandoned the background save of" in out
    assert "HANDLE SaveAbandoned" in out
    assert "LEFT []" in out
    storage = LocalStorage(str(tmp_path / "store"))
    assert _manifests(storage) == []  # after the process ended: nothing committed, ever


@contextmanager
def _signal_once_main_waits_in(owner: object, method: str, signum: int, ready: threading.Event):
    """Send ``signum`` to this process, from a helper thread, once ``ready`` is set and the
    main thread has entered ``owner.<method>`` (which then blocks on the held upload, so the
    signal arrives during that wait).

    The entry is seen by wrapping the method on the instance, not by polling
    ``sys._current_frames()``: on CPython 3.11 that call can deadlock with a garbage collection
    and a thread being started (gh-106883; it hung a clean-clone run).  The helper gives up
    after ``HOLD`` seconds and is stopped and joined when the block ends, so it never signals a
    later test."""
    stop = threading.Event()
    entered = threading.Event()
    real = getattr(owner, method)

    def wrapped(*args, **kwargs):
        entered.set()
        return real(*args, **kwargs)

    def send() -> None:
        if ready.wait(HOLD) and not stop.is_set():
            while not entered.wait(0.01):
                if stop.is_set():
                    return
            # Past the wrapper: the held upload keeps the main thread in the method's wait.
            if not stop.wait(0.05):
                os.kill(os.getpid(), signum)

    setattr(owner, method, wrapped)
    helper = threading.Thread(target=send, name="test-signal", daemon=True)
    helper.start()
    try:
        yield
    finally:
        stop.set()
        helper.join(HOLD)
        delattr(owner, method)


def test_a_signal_during_the_wait_for_background_saves_abandons_them(tmp_path):
    """SIGTERM while the task waits for its background saves (``current.checkpoint.flush()``,
    the flush at the step's end or after its failure): the signal's bounded flush still sees
    them, abandons the one not committed in time, removes its snapshot and says so (was: the
    interrupted wait had already let go of them, so the error said "pending saves were
    committed first" while the upload went on and committed later)."""
    parts, storage, directory, logs = _task(tmp_path, save_on_interrupt=False)
    first = parts.runtime.save(metadata={"epoch": 1})
    storage.hold = True
    (directory / "model.bin").write_bytes(os.urandom(BIG))
    handle = parts.runtime.save(metadata={"epoch": 2}, blocking=False)
    assert parts.interrupts.install(parts.saves)
    try:
        signal_in_wait = _signal_once_main_waits_in(
            parts.saves._background, "wait_all", signal.SIGTERM, storage.held
        )
        with signal_in_wait, pytest.raises(CheckpointInterrupted) as info:
            parts.runtime.flush()
    finally:
        parts.interrupts.restore()
    assert "abandoned the background save of %s" % directory in info.value.message
    assert "pending saves were committed first" not in info.value.message
    assert handle.done() and isinstance(handle.exception(), SaveAbandoned)
    assert [m for m in logs if m.startswith("[@checkpoint] Abandoned the background save")]
    assert logs[-1].endswith("the latest checkpoint stays %s." % first.key)
    assert [p for p in os.listdir(tmp_path) if p.startswith(SNAPSHOT_PREFIX)] == []
    # The held upload goes on: once the worker moved past it, nothing of it was committed.
    storage.gate.set()
    with pytest.raises(SaveAbandoned):
        parts.runtime.save(metadata={"epoch": 3}, blocking=False).wait(30)
    assert _manifests(storage) == [first.key]


def test_a_failure_collected_before_a_signal_during_the_wait_is_still_reported(tmp_path):
    """The first background save failed before the wait for the second was interrupted by
    SIGTERM: the signal's flush still reports that failure (was: the interrupted wait had
    taken it off the pending saves, and it was lost with the wait)."""
    parts, storage, directory, logs = _task(tmp_path, save_on_interrupt=False)
    real = storage.ingest_range
    calls = []

    def first_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("injected: AccessDenied")
        return real(*args, **kwargs)

    storage.ingest_range = first_fails
    (directory / "model.bin").write_bytes(os.urandom(BIG))
    failing = parts.runtime.save(metadata={"epoch": 1}, blocking=False)
    with pytest.raises(Exception, match="injected"):
        failing.wait(30)  # it failed before the wait below starts
    storage.hold = True
    (directory / "model.bin").write_bytes(os.urandom(BIG))
    parts.runtime.save(metadata={"epoch": 2}, blocking=False)
    assert parts.interrupts.install(parts.saves)
    try:
        signal_in_wait = _signal_once_main_waits_in(
            parts.saves._background, "wait_all", signal.SIGTERM, storage.held
        )
        with signal_in_wait, pytest.raises(CheckpointInterrupted):
            parts.runtime.flush()
    finally:
        parts.interrupts.restore()
        storage.gate.set()
    failed = [m for m in logs if "background checkpoint save(s) failed" in m]
    assert failed and "injected: AccessDenied" in failed[0], logs


class PruneStorage(GatedStorage):
    """Signals arrive during a retention prune: in the save's listing of the series
    (``signal_on_list``), or in a delete (``hold_deletes``: each delete then waits for
    :attr:`gate`; ``deleted`` is set once one returned)."""

    def __init__(self, root: str):
        super().__init__(root)
        self.signal_on_list = False
        self.handled = lambda: True  # the signal reached its handler (in the main thread)
        self.hold_deletes = False
        self.deleted = threading.Event()
        # A background save's delete signals only once the test has its handle: otherwise a
        # fast save thread signals while ``save()`` has not yet returned, and the handle is lost.
        self.signal_after: threading.Event | None = None

    def list(self, prefix, *args, **kwargs):
        # In the save's thread: the task's own for a small save into a local store (ADR 009).
        if self.signal_on_list and threading.current_thread().name in (
            "checkpoint-save",
            "MainThread",
        ):
            self.signal_on_list = False
            os.kill(os.getpid(), signal.SIGTERM)
            while not self.handled():  # Python runs the handler at the main thread's next tick
                threading.Event().wait(0.01)
        return super().list(prefix, *args, **kwargs)

    def _delete(self, key):
        self._record("delete", key)
        if self.hold_deletes:
            if not self.held.is_set():
                if self.signal_after is not None:
                    self.signal_after.wait(HOLD)
                self.held.set()
                os.kill(os.getpid(), signal.SIGTERM)
            self.gate.wait(HOLD)
        super()._delete(key)
        self.deleted.set()


def _pruning_task(tmp_path: Path):
    """A task keeping one checkpoint (``keep_last=1``) on a :class:`PruneStorage`."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import retention

    return _task(tmp_path, storage_class=PruneStorage, retention=retention.build(keep_last=1))


def test_a_signal_during_the_prune_s_listing_skips_its_deletes(tmp_path):
    """A signal arriving while a committed save lists its series to prune it: nothing is
    deleted (the stopping task's time is not spent on pruning), the log says the save
    committed and the next attempt prunes (was: the prune went on and deleted)."""
    parts, storage, directory, logs = _pruning_task(tmp_path)
    first = parts.runtime.save(metadata={"epoch": 1})
    (directory / "state.txt").write_text("epoch 2")
    storage.signal_on_list = True
    storage.handled = lambda: parts.interrupts.received is not None
    second = _commits_then_stops(parts, storage, first)
    assert not [c for c in storage.calls if c[1] == "delete"]
    assert (
        "[@checkpoint] Committed %s; pruning older checkpoints skipped after SIGTERM (the next "
        "attempt's saves prune)." % second
    ) in logs


def test_a_delete_in_flight_at_the_deadline_is_not_waited_for(tmp_path):
    """A blocking save committed and is pruning when SIGTERM arrives; its delete is held past
    the deadline.  The signal's handling ends without waiting for that delete, and the log
    says the save committed and its pruning was not waited for (was: the wait after the
    commit was unbounded, the task stayed until the delete returned)."""
    parts, storage, directory, logs = _pruning_task(tmp_path)
    parts.runtime.save(metadata={"epoch": 1})
    (directory / "state.bin").write_bytes(os.urandom(BIG))
    storage.hold_deletes = True
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted, match="pending saves were committed first"):
            parts.runtime.save(metadata={"epoch": 2})
        assert not storage.deleted.is_set()  # returned while the delete was still held
    finally:
        parts.interrupts.restore()
        storage.gate.set()
    second = parts.saves.latest(None)
    assert (
        "[@checkpoint] The save in progress committed as %s; not waiting for its pruning of "
        "older checkpoints (the next attempt's saves prune)." % second
    ) in logs


def test_a_background_save_pruning_at_the_deadline_is_not_waited_for(tmp_path):
    """The same for a background save: committed and pruning when the signal's time runs out,
    its handle holds its reference (it committed) and the flush returns without waiting for
    the delete in flight (was: ``BackgroundSaver.abandon`` waited for the whole prune)."""
    parts, storage, directory, logs = _pruning_task(tmp_path)
    parts.runtime.save(metadata={"epoch": 1})
    (directory / "state.txt").write_text("epoch 2")
    storage.hold_deletes = True
    storage.signal_after = threading.Event()
    handles = []
    assert parts.interrupts.install(parts.saves)  # before the save: its delete signals
    try:
        with pytest.raises(CheckpointInterrupted, match="pending saves were committed first"):
            handles.append(parts.runtime.save(metadata={"epoch": 2}, blocking=False))
            storage.signal_after.set()
            parts.runtime.flush()
        assert not storage.deleted.is_set()  # returned while the delete was still held
    finally:
        parts.interrupts.restore()
        storage.gate.set()
    (handle,) = handles
    assert handle.done() and handle.exception() is None
    assert handle.reference is not None and handle.reference.key in _manifests(storage)
    assert [p for p in os.listdir(tmp_path) if p.startswith(SNAPSHOT_PREFIX)] == []
