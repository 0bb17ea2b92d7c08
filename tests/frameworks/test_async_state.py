"""TrainingState.save(..., blocking=False) blocks only to copy the state to host memory.

Real tiny torch models and real local stores.  A store whose blob writes wait at a gate keeps
the task's background save thread busy with an earlier save, so the state's files are written
only after the test has gone on training: what the checkpoint holds is then provably the copy
taken at the call, not the live tensors.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (  # noqa: E402
    is_manifest_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (  # noqa: E402
    CheckpointStore,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.tempnames import (  # noqa: E402
    SNAPSHOT_PREFIX,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (  # noqa: E402
    CheckpointException,
    CheckpointInterrupted,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.pytorch import (  # noqa: E402
    TrainingState,
    TrainingStateError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.staged_state import (  # noqa: E402
    MAX_STAGED,
    stage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.state_files import (  # noqa: E402
    write_files,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (  # noqa: E402
    LocalStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (  # noqa: E402
    TaskSettings,
    build,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.fence import (  # noqa: E402
    SaveAbandoned,
)

from .test_pytorch import (  # noqa: E402
    assert_same_tensors,
    full_state,
    make_state,
    scramble_rngs,
    seed_all,
    train_step,
)

HOLD = 30  # seconds a held write waits for the gate at most (the tests open it far sooner)
SETTINGS = TaskSettings(
    async_budget=1 << 30, parallel_timeout=30.0, pause_poll_seconds=0.0, interrupt_seconds=0.5
)


class GatedStorage(LocalStorage):
    """A local store whose blob writes wait for :attr:`gate` while :attr:`hold` is set."""

    def __init__(self, root: str):
        super().__init__(root)
        self.hold = False
        self.gate = threading.Event()
        self.held = threading.Event()  # a write is waiting at the gate

    def _wait(self) -> None:
        if self.hold:
            self.held.set()
            self.gate.wait(HOLD)

    def ingest_range(self, src, offset, length, digest, key):
        self._wait()
        return super().ingest_range(src, offset, length, digest, key)

    def ingest_filled(self, *args, **kwargs):
        # Small files packed into one blob, on stores that have that path.
        self._wait()
        inner = getattr(super(), "ingest_filled", None)
        return None if inner is None else inner(*args, **kwargs)

    def _put_bytes(self, key, data):
        if key.startswith("blobs/"):
            self._wait()
        super()._put_bytes(key, data)


def _task(tmp_path):
    """A task's parts on a gated local store; its directory holds notes.txt, a file of the
    user's that a TrainingState save takes along."""
    storage = GatedStorage(str(tmp_path / "store"))
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "notes.txt").write_text("tokenizer v2")
    logs: list[str] = []
    scope = Scope("user:tester", "TrainFlow", "train", "_", "1", "2", 0)
    parts = build(
        CheckpointStore(storage), scope, str(directory), settings=SETTINGS, log=logs.append
    )
    return parts, storage, directory, logs


def _busy_worker(parts, storage, directory):
    """Hold the background save thread on a plain background save's upload."""
    (directory / "big.bin").write_bytes(os.urandom(2 << 20))
    storage.hold = True
    handle = parts.runtime.save(blocking=False)
    assert storage.held.wait(HOLD)
    os.unlink(directory / "big.bin")
    return handle


def _manifests(storage) -> list[str]:
    return sorted(o.key for o in storage.list("manifests/") if is_manifest_key(o.key))


def _leftovers(tmp_path) -> list[str]:
    return [p for p in os.listdir(tmp_path) if p.startswith((SNAPSHOT_PREFIX, ".mfckpt-staged-"))]


class TiedNet(torch.nn.Module):
    """Two names for one weight: safetensors keeps one and records the other in metadata."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def _files(directory) -> dict:
    return {
        name: open(os.path.join(directory, name), "rb").read()
        for name in sorted(os.listdir(directory))
    }


# ------------------------------------------------------------------------------ the files
def test_an_async_save_writes_byte_for_byte_the_files_of_a_blocking_save(tmp_path):
    parts, _, directory, _ = _task(tmp_path)
    runtime = parts.runtime
    seed_all(0)
    state = make_state(0, epoch=3, tied=TiedNet())
    for _ in range(4):
        train_step(state)
    blocking = state.save(runtime, metadata={"loss": 0.5})
    handle = state.save(runtime, metadata={"loss": 0.5}, blocking=False)
    background = handle.wait(HOLD)
    assert background.metadata == blocking.metadata == {"step": 4, "epoch": 3, "loss": 0.5}
    a = _files(runtime.load(blocking, str(tmp_path / "a")))
    b = _files(runtime.load(background, str(tmp_path / "b")))
    assert sorted(b) == [
        "model.safetensors",
        "notes.txt",  # the user's file in checkpoint.directory, as a blocking save takes it
        "optimizer.pt",
        "rng.pt",
        "scaler.pt",
        "scheduler.pt",
        "state.json",
        "tied.safetensors",
    ]
    for name in a:
        if name.endswith(".pt"):  # a zip whose folder is named after its (temporary) file
            load = torch.load  # noqa: E731
            da, db = (load(os.path.join(tmp_path, d, name), weights_only=True) for d in "ab")
            assert_same_tensors(da, db, name)
        else:
            assert a[name] == b[name], name
    restored = make_state(5, tied=TiedNet())
    restored.read(str(tmp_path / "b"))
    assert_same_tensors(full_state(restored), full_state(state))
    assert restored.tied.head.weight is restored.tied.embed.weight
    runtime.flush()
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ the call's state
def test_training_goes_on_at_once_and_the_checkpoint_holds_the_state_of_the_call(tmp_path):
    parts, storage, directory, _ = _task(tmp_path)
    runtime = parts.runtime
    seed_all(1)
    state = make_state(1)
    train_step(state)
    train_step(state)
    busy = _busy_worker(parts, storage, directory)
    handle = state.save(runtime, blocking=False)
    expected = full_state(state)
    draws = (torch.rand(3), np.random.rand(3), random.random())  # right after the call
    for _ in range(3):
        train_step(state)  # changes every parameter and optimizer buffer in place
    assert not handle.done()  # its files are not even written: the worker is still held
    changed = full_state(state)["model"]
    assert not all(torch.equal(changed[k], expected["model"][k]) for k in changed)
    storage.gate.set()
    busy.wait(HOLD)
    ref = handle.wait(HOLD)
    assert ref.metadata == {"step": 2, "epoch": 0}

    restored = make_state(9)
    scramble_rngs()
    assert restored.read(runtime.load(ref, str(tmp_path / "loaded")))
    assert restored.step == 2 and len(restored.extra["losses"]) == 2
    assert_same_tensors(full_state(restored), expected)
    again = (torch.rand(3), np.random.rand(3), random.random())  # RNGs as at the call
    assert torch.equal(again[0], draws[0]) and (again[1] == draws[1]).all()
    assert again[2] == draws[2]
    runtime.flush()


def test_at_most_two_copies_are_held_a_third_save_waits_for_the_older_one(tmp_path):
    parts, storage, directory, _ = _task(tmp_path)
    runtime = parts.runtime
    seed_all(2)
    state = make_state(2)
    busy = _busy_worker(parts, storage, directory)
    handles, expected = [], []
    for _ in range(MAX_STAGED):
        train_step(state)
        handles.append(state.save(runtime, blocking=False))  # both copies held: none written
        expected.append(full_state(state))
    train_step(state)
    expected.append(full_state(state))
    third = threading.Thread(target=lambda: handles.append(state.save(runtime, blocking=False)))
    third.start()
    third.join(0.5)
    assert third.is_alive() and len(handles) == MAX_STAGED  # waits for room, copies nothing
    storage.gate.set()
    third.join(HOLD)
    assert not third.is_alive()
    busy.wait(HOLD)
    handles[-1].wait(HOLD)
    train_step(state)  # a fourth save copies into the memory of a written one: still its own
    handles.append(state.save(runtime, blocking=False))
    expected.append(full_state(state))
    for i, handle in enumerate(handles):
        ref = handle.wait(HOLD)
        assert ref.metadata["step"] == i + 1
        restored = make_state(9)
        restored.read(runtime.load(ref, str(tmp_path / ("loaded%d" % i))))
        assert_same_tensors(full_state(restored), expected[i], "save %d" % i)
    runtime.flush()


# ------------------------------------------------------------------------------ failures
class Opaque:
    """Not something torch.load(weights_only=True) rebuilds."""


class Holder:
    """A tracked object whose state_dict() holds ``value`` beside a tensor."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"what": self.value, "weights": torch.ones(3)}

    def load_state_dict(self, state):
        pass


def _sigterm(parts) -> CheckpointInterrupted:
    """SIGTERM to this process with the task's handlers installed: what they raise."""
    assert parts.interrupts.install(parts.saves)
    try:
        with pytest.raises(CheckpointInterrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        parts.interrupts.restore()
    return info.value


def test_an_error_while_writing_in_the_background_fails_the_handle_and_the_flush(tmp_path):
    parts, storage, directory, _ = _task(tmp_path)
    runtime = parts.runtime
    state = TrainingState(model=torch.nn.Linear(2, 2), holder=Holder(Opaque()), step=7)
    handle = state.save(runtime, blocking=False)  # the copy is taken; the check is a write's
    with pytest.raises(TrainingStateError, match="cannot be read back"):
        handle.wait(HOLD)
    with pytest.raises(CheckpointException) as info:
        runtime.flush()  # what the end of the task does: the task fails naming the save
    (failed,) = info.value.failures
    assert failed.error_type == "TrainingStateError"
    assert failed.save == "save of the training state (step 7) ('mfchckpt')"
    assert _manifests(storage) == []
    assert _leftovers(tmp_path) == []


def test_a_signal_abandons_an_async_save_not_committed_in_time(tmp_path):
    parts, storage, directory, logs = _task(tmp_path)
    runtime = parts.runtime
    first = runtime.save()
    state = make_state(3)
    train_step(state)
    storage.hold = True
    handle = state.save(runtime, blocking=False)
    assert storage.held.wait(HOLD)  # its files are written, its upload is held
    interrupted = _sigterm(parts)
    assert handle.done() and isinstance(handle.exception(), SaveAbandoned)
    assert "abandoned the background save of the training state (step 1)" in interrupted.message
    assert logs[-1].endswith("the latest checkpoint stays %s." % first.key)
    assert _leftovers(tmp_path) == []
    storage.gate.set()  # the held upload goes on, and never commits
    with pytest.raises(SaveAbandoned):
        runtime.save(blocking=False).wait(HOLD)
    assert _manifests(storage) == [first.key]


class SlowToPickle:
    """Pickled (by torch.save, in the background write) only once ``gate`` opens; sets
    ``writing`` when pickling starts.  Both are made anew for each test (:func:`slow_pickle`):
    events left set by an earlier run would let the test go on before the write is held."""

    writing: threading.Event
    gate: threading.Event

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        SlowToPickle.writing.set()
        SlowToPickle.gate.wait(HOLD)
        return (int, (0,))


@pytest.fixture
def slow_pickle(monkeypatch):
    """Fresh events for :class:`SlowToPickle`; the gate is opened at the end, whatever failed,
    so no background write is left waiting."""
    monkeypatch.setattr(SlowToPickle, "writing", threading.Event(), raising=False)
    monkeypatch.setattr(SlowToPickle, "gate", threading.Event(), raising=False)
    gate = SlowToPickle.gate
    yield SlowToPickle
    gate.set()


def test_a_signal_while_the_files_are_written_abandons_the_save_and_removes_them(
    tmp_path, slow_pickle
):
    parts, storage, directory, logs = _task(tmp_path)
    runtime = parts.runtime
    first = runtime.save()
    state = TrainingState(model=torch.nn.Linear(2, 2), holder=Holder(slow_pickle()), step=5)
    handle = state.save(runtime, blocking=False)
    assert slow_pickle.writing.wait(HOLD)  # the background thread is writing holder.pt
    try:
        interrupted = _sigterm(parts)
    finally:
        slow_pickle.gate.set()  # the write goes on into a directory that is gone
    assert handle.done() and isinstance(handle.exception(), SaveAbandoned)
    assert "abandoned the background save of the training state (step 5)" in interrupted.message
    with pytest.raises(SaveAbandoned):  # queued behind it: the worker has moved past it
        runtime.save(blocking=False).wait(HOLD)
    assert _manifests(storage) == [first.key]
    assert _leftovers(tmp_path) == []


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


def _tensor(draw_shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(draw_shape, generator=g) * 100).to(dtype)


_tensors = st.builds(
    _tensor,
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.sampled_from(_DTYPES),
    st.integers(0, 1000),
)
_values = st.recursive(
    _tensors | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5) | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


class Bag:
    """Any state_dict() of tensors, numbers, strings, lists and dicts."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(state=st.dictionaries(st.text(min_size=1, max_size=4), _values, max_size=4))
def test_a_staged_copy_writes_the_state_of_the_call(tmp_path_factory, state):
    """Any state_dict() of tensors (every dtype, empty and 0-d ones) and plain values: what the
    background writes from the copy reads back as the state at the call, whatever the live
    tensors became."""
    expected = copy.deepcopy(state)
    parts, _, _ = stage({"bag": Bag(state)}, 1, 0, {}, False)
    for value in _leaves(state):  # training changes the live tensors after the call
        if isinstance(value, torch.Tensor) and value.numel():
            value.view(-1)[0] = ~value.view(-1)[0] if value.dtype == torch.bool else 7
    directory = str(tmp_path_factory.mktemp("staged"))
    write_files(parts, directory, weights_only=True)
    loaded = Bag(None)
    assert TrainingState(bag=loaded, rng=False).read(directory)
    assert_same_tensors(loaded.state, expected, "bag")


def test_the_copy_is_taken_on_the_host_without_cuda(tmp_path):
    """On a machine without CUDA nothing asks for pinned memory: every tensor is a plain CPU
    copy sharing no memory with the live one."""
    state = make_state(4)
    train_step(state)
    parts, _, nbytes = stage(state.objects, state.step, state.epoch, state.extra, state.rng)
    live = state.model.state_dict()
    for name, tensor in parts.entries["model"].tensors.items():
        assert tensor.device.type == "cpu" and tensor.is_contiguous()
        assert tensor.data_ptr() != live[name].data_ptr() and torch.equal(tensor, live[name])
    exp_avg = parts.entries["optimizer"].state["state"][0]["exp_avg"]
    assert exp_avg.data_ptr() != state.optimizer.state_dict()["state"][0]["exp_avg"].data_ptr()
    assert nbytes >= sum(t.numel() * t.element_size() for t in live.values())


# ------------------------------------------------------------------------------ in a flow
def _uninterrupted(flow_file, steps: int) -> TrainingState:
    """The flow's training run straight through in this process (the flow file's own
    build/train_step): the result a resumed attempt must match bitwise.  The global RNGs it
    seeds are put back afterwards."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_resume_flow", flow_file)
    flow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flow)
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        state, data = flow.build()
        while state.step < steps:
            flow.train_step(state, data)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
    return state


@pytest.mark.flow
def test_a_crash_right_after_an_async_save_resumes_from_it_on_retry(flow_env):
    """Attempt 0 saves at step 4 with blocking=False and crashes at once: the failing task
    still commits that save, and the retry resumes from it (and saves step 6 the same way)
    and ends bitwise identical to the same training run uninterrupted.  One flow run: the
    uninterrupted result is computed in this process (a second run only re-imports torch)."""
    from integration.flowrun import FLOWS, run_flow, single_task
    from metaflow import namespace

    namespace(None)
    env, tmp = flow_env
    flow = FLOWS / "torch_resume_flow.py"
    crashed = run_flow(
        flow, env, tmp, run_kwargs={"steps": 6, "crash_after": 4, "async_saves": True}
    )
    task = single_task(crashed.run, "start")
    assert task.current_attempt == 1 and task.data.resumed_at == 4
    straight = _uninterrupted(flow, 6)
    for name in ("model", "optimizer", "scheduler", "scaler"):
        expected = getattr(straight, name).state_dict()
        assert_same_tensors(getattr(task.data, name + "_state"), expected, name)
    assert task.data.losses == straight.extra["losses"] and len(task.data.losses) == 6


# -------------------------------------------------------------------------------- the other files
def test_a_relative_link_in_the_directory_is_saved_as_a_blocking_save_saves_it(tmp_path):
    """checkpoint.directory's other files are copied once, by the background save's own
    snapshot with save()'s rules for links: a relative link to a file outside the directory
    (tok.json -> ../other/tok.json) is saved as that file's bytes, as a blocking save saves
    it (was: copied as a link into a temporary directory where it dangled, failing the call
    with an error naming that temporary path)."""
    parts, _, directory, _ = _task(tmp_path)
    runtime = parts.runtime
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tok.json").write_text('{"vocab": 3}')
    os.symlink(os.path.join("..", "other", "tok.json"), directory / "tok.json")
    state = TrainingState(model=torch.nn.Linear(2, 2), step=1)
    blocking = state.save(runtime)
    before = set(os.listdir(tmp_path))
    handle = state.save(runtime, blocking=False)
    made = sorted(set(os.listdir(tmp_path)) - before)
    assert [p for p in made if not p.startswith(SNAPSHOT_PREFIX)] == []  # one copy: the snapshot
    a = _files(runtime.load(blocking, str(tmp_path / "a")))
    b = _files(runtime.load(handle.wait(HOLD), str(tmp_path / "b")))
    assert (
        sorted(b)
        == sorted(a)
        == [
            "model.safetensors",
            "notes.txt",
            "rng.pt",
            "state.json",
            "tok.json",
        ]
    )
    assert b["tok.json"] == b'{"vocab": 3}' and b["state.json"] == a["state.json"]
    runtime.flush()
    assert _leftovers(tmp_path) == []


def test_blocking_false_with_other_save_options_returns_once_the_state_is_copied(
    tmp_path, slow_pickle
):
    """Every blocking=False call takes the staged path, whatever other save options it has
    (was: only exactly blocking=False; any other option wrote the files in the call): the
    call returns while the background thread is still held writing the state's files, and
    the options reach the save."""
    parts, _, directory, _ = _task(tmp_path)
    runtime = parts.runtime
    # weights_only=False: the gate pickles as a call of int, which only a full unpickler takes
    state = TrainingState(
        model=torch.nn.Linear(2, 2), holder=Holder(slow_pickle()), step=3, weights_only=False
    )
    handle = state.save(
        runtime, {"loss": 0.25}, "warmup", False, blocking=False, storage_format="tar"
    )
    assert slow_pickle.writing.wait(HOLD)  # the background thread is writing holder.pt ...
    assert not handle.done()  # ... and the call has returned
    assert not (directory / "holder.pt").exists()  # never written into the directory itself
    slow_pickle.gate.set()
    ref = handle.wait(HOLD)
    assert ref.name == "warmup" and ref.latest is False
    assert ref.metadata == {"loss": 0.25, "step": 3, "epoch": 0}
    loaded = runtime.load(ref, str(tmp_path / "loaded"))
    assert sorted(os.listdir(loaded)) == [
        "holder.pt",
        "model.safetensors",
        "notes.txt",
        "rng.pt",
        "state.json",
    ]
    with pytest.raises(TypeError):  # an option checkpoint.save does not take: refused
        state.save(runtime, blocking=False, no_such_option=1)
    runtime.flush()
