"""TrainingState and Every: round trips, RNG restore, safe loading, through a real checkpoint."""

from __future__ import annotations

import copy
import json
import os
import random

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import (  # noqa: E402
    resolve,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (  # noqa: E402
    CheckpointStore,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.pytorch import (  # noqa: E402
    Every,
    TrainingState,
    TrainingStateError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (  # noqa: E402
    LocalStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (  # noqa: E402
    build_runtime,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime import (  # noqa: E402
    CheckpointRuntime,
)


# ------------------------------------------------------------------------------ a tiny trainer
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
        )
        self.norm = torch.nn.BatchNorm1d(4)  # buffers (running stats, num_batches_tracked)

    def forward(self, x):
        return self.body(self.norm(x))


DATA_X = torch.arange(64 * 4, dtype=torch.float32).reshape(64, 4).sin()
DATA_Y = DATA_X.sum(dim=1, keepdim=True).cos()


def make_state(seed: int, **kw) -> TrainingState:
    """Fresh objects, initialised from ``seed`` (a restarted process draws other numbers)."""
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    return TrainingState(model, optimizer, scheduler, scaler, extra={"losses": []}, **kw)


def train_step(state: TrainingState) -> None:
    """One step drawing from all three RNGs: batch (torch), noise (numpy), flip (python),
    dropout (torch)."""
    model, optimizer = state.model, state.optimizer
    model.train()
    idx = torch.randint(0, 64, (8,))
    noise = torch.from_numpy(np.random.normal(0, 0.1, size=(8, 4)).astype(np.float32))
    x = DATA_X[idx] + noise
    if random.random() < 0.5:
        x = -x
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), DATA_Y[idx])
    state.scaler.scale(loss).backward()
    state.scaler.step(optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.step += 1
    state.extra["losses"].append(loss.item())


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assert_same_tensors(a, b, where="") -> None:
    """Bitwise equality of two nested state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same_tensors(a[k], b[k], "%s.%s" % (where, k))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, "%s[%d]" % (where, i))
    else:
        assert a == b, (where, a, b)


def full_state(state: TrainingState) -> dict:
    """A copy: state_dict() tensors alias the live parameters."""
    return copy.deepcopy({name: obj.state_dict() for name, obj in state.objects.items()})


def scramble_rngs() -> None:
    """What a new process looks like: every generator somewhere else."""
    seed_all(987654)
    random.random(), np.random.rand(), torch.rand(1)


# ------------------------------------------------------------------------------ round trips
def test_write_read_round_trip_restores_every_object_bitwise(tmp_path):
    seed_all(0)
    state = make_state(0, epoch=2)
    for _ in range(5):
        train_step(state)
    state.extra["best"] = 0.25
    doc = state.write(str(tmp_path))
    expected = full_state(state)
    assert sorted(os.listdir(tmp_path)) == [
        "model.safetensors",
        "optimizer.pt",
        "rng.pt",
        "scaler.pt",
        "scheduler.pt",
        "state.json",
    ]
    assert doc["step"] == 5 and doc["epoch"] == 2
    # The scaler really moved and the optimizer holds Adam moments: their restore is tested.
    assert expected["scaler"]["scale"] != 2.0**8
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(expected["optimizer"]["state"][0])
    assert expected["scheduler"]["last_epoch"] == 5

    restored = make_state(1)
    assert restored.read(str(tmp_path)) is True
    assert_same_tensors(full_state(restored), expected)
    assert (restored.step, restored.epoch) == (5, 2)
    assert restored.extra == {"losses": state.extra["losses"], "best": 0.25}
    assert restored.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]


def test_sgd_momentum_buffers_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    TrainingState(model, opt, rng=False).write(str(tmp_path))
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.1)
    TrainingState(model2, opt2, rng=False).read(str(tmp_path))
    assert_same_tensors(opt2.state_dict(), opt.state_dict())
    assert_same_tensors(model2.state_dict(), model.state_dict())


def test_rng_streams_continue_as_in_an_uninterrupted_process(tmp_path):
    seed_all(3)
    random.random(), np.random.normal(), torch.randn(3)  # move away from the seeded state
    TrainingState().write(str(tmp_path))
    # What the uninterrupted process draws next, from every generator (incl. cached gaussians).
    expected = (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.normal(size=5).tolist(),
        np.random.randint(0, 1000, size=3).tolist(),
        torch.rand(4),
        torch.randn(2),
    )
    scramble_rngs()
    assert TrainingState().read(str(tmp_path)) is True
    got = (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.normal(size=5).tolist(),
        np.random.randint(0, 1000, size=3).tolist(),
        torch.rand(4),
        torch.randn(2),
    )
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4]) and torch.equal(got[5], expected[5])
    sources = json.loads((tmp_path / "state.json").read_text())["rng"]["sources"]
    assert sources == ["numpy", "python", "torch"]  # no CUDA on this machine: skipped quietly


def _train(total: int, interrupt_at: int | None, directory, rng: bool = True):
    """Train ``total`` steps; if ``interrupt_at``, save there, keep going a little (lost work),
    then 'restart': new objects from another seed, restore, finish."""
    seed_all(0)
    state = make_state(0, rng=rng)
    while state.step < total:
        train_step(state)
        if state.step == interrupt_at:
            state.write(str(directory))
            for _ in range(2):  # work after the save that the crash loses
                train_step(state)
            scramble_rngs()
            state = make_state(42, rng=rng)
            assert state.read(str(directory))
            assert state.step == interrupt_at
    return state


def test_interrupted_training_ends_bitwise_identical_to_uninterrupted(tmp_path):
    straight = _train(9, None, tmp_path / "a")
    resumed = _train(9, 4, tmp_path / "b")
    assert_same_tensors(full_state(resumed), full_state(straight))
    assert resumed.extra["losses"] == straight.extra["losses"]
    assert len(resumed.extra["losses"]) == 9


def test_without_rng_restore_the_resumed_run_diverges(tmp_path):
    """The control of the test above: the RNG states are what make the two runs equal."""
    straight = _train(9, None, tmp_path / "a", rng=False)
    resumed = _train(9, 4, tmp_path / "b", rng=False)
    assert resumed.extra["losses"][:4] == straight.extra["losses"][:4]
    assert resumed.extra["losses"][4:] != straight.extra["losses"][4:]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_wrapped_and_tied_modules(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight  # shared tensor: safetensors needs save_model

    torch.manual_seed(0)
    model = Tied()
    TrainingState(torch.nn.DataParallel(model), rng=False).write(str(tmp_path))
    torch.manual_seed(1)
    bare = Tied()
    TrainingState(bare, rng=False).read(str(tmp_path))
    assert torch.equal(bare.emb.weight, model.emb.weight)
    assert bare.out.weight is bare.emb.weight  # still tied after loading


def test_more_objects_by_name(tmp_path):
    torch.manual_seed(0)
    gen, disc = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt_g, opt_d = torch.optim.SGD(gen.parameters(), lr=0.1), torch.optim.Adam(disc.parameters())
    state = TrainingState(gen, opt_g, discriminator=disc, opt_d=opt_d, rng=False)
    assert state.discriminator is disc and state.opt_d is opt_d
    doc = state.write(str(tmp_path))
    assert doc["objects"]["discriminator"]["file"] == "discriminator.safetensors"
    assert doc["objects"]["opt_d"]["file"] == "opt_d.pt"
    disc2 = torch.nn.Linear(2, 1)
    TrainingState(
        torch.nn.Linear(2, 2),
        torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1),
        discriminator=disc2,
        opt_d=torch.optim.Adam(disc2.parameters()),
        rng=False,
    ).read(str(tmp_path))
    assert torch.equal(disc2.weight, disc.weight)


# ------------------------------------------------------------------------------ safety
class _Boom:
    """Unpickling this would run ``os.mkdir(marker)``: what a malicious file could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng.pt"])
def test_loading_never_unpickles_arbitrary_objects(tmp_path, victim):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = tmp_path / "ckpt"
    TrainingState(model, opt).write(str(ckpt))
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [_Boom(str(marker))]}, str(ckpt / victim))
    with pytest.raises(TrainingStateError) as err:
        TrainingState(torch.nn.Linear(2, 2), opt).read(str(ckpt))
    assert not marker.exists(), "a crafted checkpoint executed code on load"
    message = str(err.value)
    assert victim in message and "weights_only" in message
    assert "nothing in it was executed" in message


def test_unsafe_loading_is_an_explicit_opt_in(tmp_path):
    """weights_only=False does unpickle (documented as unsafe): the default is what protects."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    TrainingState(model, opt, rng=False).write(str(tmp_path))
    marker = tmp_path / "ran"
    torch.save({"state": {}, "param_groups": [_Boom(str(marker))]}, str(tmp_path / "optimizer.pt"))
    with pytest.raises(Exception):  # noqa: B017 - the object is not a valid optimizer state
        TrainingState(model, opt, rng=False, weights_only=False).read(str(tmp_path))
    assert marker.exists()


class _Custom:
    pass


class _OddScheduler:
    """A state_dict holding a custom object: torch.load(weights_only=True) cannot read it."""

    def state_dict(self):
        return {"thing": _Custom()}

    def load_state_dict(self, state):  # pragma: no cover - never reached
        pass


def test_write_refuses_a_state_that_could_not_be_restored_safely(tmp_path):
    with pytest.raises(TrainingStateError) as err:
        TrainingState(scheduler=_OddScheduler(), rng=False).write(str(tmp_path))
    assert "scheduler" in str(err.value) and "add_safe_globals" in str(err.value)
    assert not (tmp_path / "state.json").exists()  # nothing describes the failed write


# ------------------------------------------------------------------------------ mismatches
def test_strict_names_mismatch_and_non_strict_partial_restore(tmp_path):
    seed_all(0)
    state = make_state(0)
    train_step(state)
    state.write(str(tmp_path))
    torch.manual_seed(5)
    model_only = TrainingState(Net(), rng=False)
    with pytest.raises(TrainingStateError) as err:
        model_only.read(str(tmp_path))
    assert "saved there but not tracked: optimizer, scaler, scheduler" in str(err.value)
    assert model_only.read(str(tmp_path), strict=False) is True
    assert_same_tensors(model_only.model.state_dict(), state.model.state_dict())

    extra_obj = TrainingState(Net(), ema=Net(), rng=False)
    with pytest.raises(TrainingStateError, match="not saved there: ema"):
        extra_obj.read(str(tmp_path))


def test_nothing_to_read_and_invalid_input(tmp_path):
    assert TrainingState().read(str(tmp_path)) is False
    assert TrainingState().read(str(tmp_path / "missing")) is False
    with pytest.raises(TrainingStateError, match="extra must be JSON"):
        TrainingState(extra={"t": torch.ones(1)}).write(str(tmp_path))
    state = TrainingState()
    state.step = torch.tensor(3)
    with pytest.raises(TrainingStateError, match="state.step"):
        state.write(str(tmp_path))
    with pytest.raises(TrainingStateError, match="state_dict"):
        TrainingState(optimizer=object())
    with pytest.raises(TrainingStateError, match="names become file names"):
        TrainingState(**{"../x": torch.nn.Linear(1, 1)})
    (tmp_path / "state.json").write_text('{"format": "something else"}')
    with pytest.raises(TrainingStateError, match="not a training state"):
        TrainingState().read(str(tmp_path))


# ------------------------------------------------------------------------------ Every
def test_every_steps_seconds_and_final():
    now = [100.0]
    every = Every(steps=3, seconds=10, clock=lambda: now[0])
    due = [s for s in range(1, 8) if every.due(s)]
    assert due == [3, 6]
    assert not every.due(6)  # asked again for a step already due
    now[0] += 10  # 10 s since the save at step 6
    assert every.due(7)
    assert not every.due(8)
    assert every.due(8, final=False) is False
    assert every.due(9)  # multiple of 3
    assert not every.due(9, final=True)  # the final step was already saved
    assert every.due(10, final=True)

    timed = Every(seconds=5, clock=lambda: now[0])
    assert not timed.due(1)
    now[0] += 5
    assert timed.due(2) and not timed.due(3)


@pytest.mark.parametrize(
    "kwargs", [{}, {"steps": 0}, {"steps": 2.5}, {"steps": True}, {"seconds": -1}, {"seconds": 0}]
)
def test_every_rejects_bad_arguments(kwargs):
    with pytest.raises(TrainingStateError, match="Every"):
        Every(**kwargs)


# ------------------------------------------------------------------------------ checkpoint
def _runtime(root, tmp_path, attempt: int) -> CheckpointRuntime:
    store = CheckpointStore(LocalStorage(str(root)))
    scope = Scope("user:tester", "TrainFlow", "train", "_", "1", "2", attempt)
    directory = tmp_path / ("dir%d" % attempt)
    directory.mkdir()
    runtime = build_runtime(store, scope, str(directory), log=lambda msg: None)
    runtime.load_initial(resolve(store.storage, "fresh", scope))
    return runtime


def test_save_and_restore_through_a_real_checkpoint(tmp_path):
    root = tmp_path / "store"
    first = _runtime(root, tmp_path, 0)
    seed_all(0)
    state = make_state(0, epoch=1)
    assert state.restore(first) is False  # first attempt: nothing loaded
    train_step(state)
    train_step(state)
    ref = state.save(first, metadata={"loss": 0.5})
    assert ref.metadata == {"step": 2, "epoch": 1, "loss": 0.5}
    assert ref.name == "mfchckpt" and ref.latest
    expected = full_state(state)

    retry = _runtime(root, tmp_path, 1)
    assert retry.is_loaded and retry.info.key == ref.key
    again = make_state(7)
    assert again.restore(retry) is True
    assert again.step == 2 and again.epoch == 1
    assert_same_tensors(full_state(again), expected)


def test_background_save_keeps_the_state_of_its_call(tmp_path):
    """save(..., blocking=False) is passed on: the checkpoint holds the state at the call even
    though the next write() replaces the files before the upload finishes."""
    runtime = _runtime(tmp_path / "store", tmp_path, 0)
    seed_all(0)
    state = make_state(0)
    train_step(state)
    handle = state.save(runtime, blocking=False)
    expected = full_state(state)
    for _ in range(3):
        train_step(state)
    state.write(runtime.directory)
    ref = handle.wait()
    assert ref.metadata["step"] == 1
    restored = make_state(9)
    assert restored.read(runtime.load(ref, str(tmp_path / "first")))
    assert restored.step == 1
    assert_same_tensors(full_state(restored), expected)
    runtime.flush()
