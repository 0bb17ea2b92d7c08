"""The Lightning callback: last and best checkpoints through a real checkpoint runtime, and a
crashed fit that resumes on the retry and ends bitwise identical to an uninterrupted one."""

from __future__ import annotations

import datetime
import os
import random
import re
import time
import warnings

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("pytorch_lightning")

from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import (  # noqa: E402
    resolve,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (  # noqa: E402
    CheckpointStore,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (  # noqa: E402
    CheckpointConfigError,
    CheckpointWarning,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.lightning import (  # noqa: E402
    CheckpointCallback,
    pl,
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

X = torch.linspace(-1, 1, 48 * 3).reshape(48, 3)
Y = X.sum(dim=1, keepdim=True).sin()


class Crash(Exception):
    pass


class TinyModule(pl.LightningModule):
    def __init__(self, crash_at_step: int | None = None):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1)
        )
        self.crash_at_step = crash_at_step

    def training_step(self, batch, _):
        if self.global_step == self.crash_at_step:
            raise Crash("simulated crash at step %d" % self.global_step)
        x, y = batch
        x = x + torch.from_numpy(np.random.normal(0, 0.05, size=x.shape).astype("float32"))
        if random.random() < 0.3:
            x = x.flip(0)
            y = y.flip(0)
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.05)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)]


def _loaders():
    ds = torch.utils.data.TensorDataset(X, Y)
    return (
        torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True),
        torch.utils.data.DataLoader(ds, batch_size=16),
    )


def _trainer(root, callbacks, epochs=4, **options):
    return pl.Trainer(
        **options,
        max_epochs=epochs,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        num_sanity_val_steps=0,
    )


def _runtime(root, tmp_path, attempt: int) -> CheckpointRuntime:
    store = CheckpointStore(LocalStorage(str(root)))
    scope = Scope("user:tester", "LitFlow", "train", "_", "1", "2", attempt)
    directory = tmp_path / ("dir-%s-%d" % (root.name, attempt))
    directory.mkdir()
    runtime = build_runtime(store, scope, str(directory), log=lambda msg: None)
    runtime.load_initial(resolve(store.storage, "fresh", scope))
    return runtime


def _fit(runtime, tmp_path, crash_at_step=None, seed=0, mode="min"):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    module = TinyModule(crash_at_step)
    cb = CheckpointCallback(monitor="val_loss", checkpoint=runtime, mode=mode)
    train, val = _loaders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and log intervals
        _trainer(tmp_path, [cb]).fit(module, train, val, ckpt_path=cb.ckpt_path, weights_only=True)
    return module, cb


def test_crashed_fit_resumes_on_retry_bitwise_identical(tmp_path):
    straight_root, crashed_root = tmp_path / "straight", tmp_path / "crashed"
    straight, cb = _fit(_runtime(straight_root, tmp_path, 0), tmp_path)
    assert cb.ckpt_path is None  # nothing loaded on a first attempt

    # Attempt 0: 6 steps per epoch; saved after epochs 0 and 1, crashes in epoch 2 (step 15).
    first = _runtime(crashed_root, tmp_path, 0)
    with pytest.raises(Crash):
        _fit(first, tmp_path, crash_at_step=15)
    last = first.list(name="lightning")
    assert [r.metadata["epoch"] for r in last] == [1, 0]
    assert [r.metadata["step"] for r in last] == [12, 6]

    # Attempt 1: another seed, as a new process would have; the callback finds the file.
    retry = _runtime(crashed_root, tmp_path, 1)
    assert retry.is_loaded
    resumed, cb = _fit(retry, tmp_path, seed=1234)
    assert cb.ckpt_path is not None and cb.ckpt_path.endswith("lightning.ckpt")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [r.metadata["epoch"] for r in retry.list(name="lightning")] == [3, 2, 1, 0]


def test_best_and_last_series_carry_the_metric(tmp_path):
    runtime = _runtime(tmp_path / "store", tmp_path, 0)
    _, cb = _fit(runtime, tmp_path)
    last = runtime.list(name="lightning")
    best = runtime.list(name="best")
    assert len(last) == 4 and all(r.latest for r in last)
    assert best and not any(r.latest for r in best)  # a retry never resumes from "best"
    losses = {r.metadata["epoch"]: r.metadata["val_loss"] for r in last}
    best_epoch = min(losses, key=losses.get)
    assert best[0].metadata["epoch"] == best_epoch
    assert best[0].metadata["val_loss"] == cb.best_score == losses[best_epoch]
    # Each "best" is the same file as the "last" of its epoch: only a manifest more.
    assert best[0].files == [f for r in last if r.metadata["epoch"] == best_epoch for f in r.files]
    # The file loads with weights_only=True and holds the callback's RNG states.
    with best[0].open("lightning.ckpt") as f:
        ckpt = torch.load(f, weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("CheckpointCallback")]
    assert {"python", "numpy", "torch"} <= set(state["rng"])


def test_a_retry_knows_the_best_an_earlier_attempt_saved(tmp_path):
    """mode="max" on a falling loss: the best is epoch 0's.  After a crash in epoch 2 the
    retry never improves on it, yet cb.best_reference is that checkpoint (found in the store:
    the callback's memory of attempt 0 is gone), as after an uninterrupted fit."""
    first = _runtime(tmp_path / "c", tmp_path, 0)
    with pytest.raises(Crash):
        _fit(first, tmp_path, crash_at_step=15, mode="max")
    (best,) = first.list(name="best")
    assert best.metadata["epoch"] == 0
    retry = _runtime(tmp_path / "c", tmp_path, 1)
    _, cb = _fit(retry, tmp_path, seed=1, mode="max")
    assert retry.list(name="best") == [best]  # nothing later was better
    assert cb.best_reference is not None and cb.best_reference.key == best.key
    assert cb.best_score == best.metadata["val_loss"]


def test_bad_arguments_and_outside_a_checkpoint_step():
    with pytest.raises(CheckpointConfigError, match="mode"):
        CheckpointCallback(mode="lowest")
    with pytest.raises(CheckpointConfigError, match="every_n_epochs"):
        CheckpointCallback(every_n_epochs=0)
    with pytest.raises(CheckpointConfigError, match="filename"):
        CheckpointCallback(filename="a/b.ckpt")
    with pytest.raises(CheckpointConfigError, match="@checkpoint"):
        CheckpointCallback().ckpt_path  # noqa: B018


# ------------------------------------------------------------------ mid-epoch saves
class EpochShuffle(torch.utils.data.Sampler):
    """Each epoch's order from a seed and the epoch (Lightning calls ``set_epoch``), never from
    the global generators the callback restores."""

    def __init__(self, n: int, seed: int = 7):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class ResumableLoader(torch.utils.data.DataLoader):
    """A train loader Lightning can resume mid-epoch: it has ``state_dict``/``load_state_dict``
    (Lightning stores them in the checkpoint), and a restored one skips the batches trained."""

    def __init__(self, dataset, batch_size: int):
        super().__init__(dataset, batch_size=batch_size, sampler=EpochShuffle(len(dataset)))
        self.trained, self._skip = 0, 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        if skip >= len(self):  # saved after the epoch's last batch: a new epoch starts
            skip = 0
        self.trained = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self.trained = i + 1
                yield batch

    def state_dict(self) -> dict:
        return {"trained": self.trained}

    def load_state_dict(self, state: dict) -> None:
        self._skip = state["trained"]


def _fit_mid_epoch(
    runtime,
    tmp_path,
    crash_at_step=None,
    seed=0,
    trainer_options=None,
    name="lightning",
    **schedule,
):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    module = TinyModule(crash_at_step)
    cb = CheckpointCallback(monitor="val_loss", checkpoint=runtime, name=name, **schedule)
    ds = torch.utils.data.TensorDataset(X, Y)
    train = ResumableLoader(ds, batch_size=8)
    val = torch.utils.data.DataLoader(ds, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, [cb], **(trainer_options or {})).fit(
            module, train, val, ckpt_path=cb.ckpt_path, weights_only=True
        )
    return module, cb


@pytest.mark.parametrize("crash_at, resumed_from", [(11, 9), (7, 6)], ids=["mid", "last-batch"])
def test_every_n_train_steps_saves_mid_epoch_and_resumes_bitwise_identical(
    tmp_path, crash_at, resumed_from
):
    """6 steps per epoch, a save every 3 steps (after batch 3 of an epoch and after its last
    batch) plus the end of training.  A crash resumes from the last save (Lightning's loop
    state and the loader's position are in the file, the RNG states in the callback's) and
    ends bitwise identical to an uninterrupted fit: from mid-epoch and from an epoch's last
    batch, before its validation."""
    straight_root, crashed_root = tmp_path / "straight", tmp_path / "crashed"
    straight, _ = _fit_mid_epoch(
        _runtime(straight_root, tmp_path, 0), tmp_path, every_n_train_steps=3
    )
    steps = [
        r.metadata["step"] for r in _runtime(straight_root, tmp_path, 1).list(name="lightning")
    ]
    assert steps == list(range(24, 0, -3))

    first = _runtime(crashed_root, tmp_path, 0)
    with pytest.raises(Crash):
        _fit_mid_epoch(first, tmp_path, crash_at_step=crash_at, every_n_train_steps=3)
    assert [r.metadata["step"] for r in first.list(name="lightning")] == list(
        range(resumed_from, 0, -3)
    )

    retry = _runtime(crashed_root, tmp_path, 1)
    assert retry.info.metadata["step"] == resumed_from
    resumed, _ = _fit_mid_epoch(retry, tmp_path, seed=99, every_n_train_steps=3)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [r.metadata["step"] for r in retry.list(name="lightning", attempt=1)] == list(
        range(24, resumed_from, -3)
    )


class SlowModule(TinyModule):
    def training_step(self, batch, i):
        time.sleep(0.003)
        return super().training_step(batch, i)


def test_train_time_interval_saves_when_the_interval_has_passed(tmp_path):
    """A 1 ms interval with 3 ms steps saves after every step; an hour saves only at the end."""
    for interval, expected in (
        (datetime.timedelta(milliseconds=1), list(range(24, 0, -1))),
        (datetime.timedelta(hours=1), [24]),
    ):
        runtime = _runtime(tmp_path / str(interval.total_seconds()), tmp_path, 0)
        cb = CheckpointCallback(checkpoint=runtime, train_time_interval=interval)
        train, val = _loaders()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(tmp_path, [cb]).fit(SlowModule(), train, val)
        assert [r.metadata["step"] for r in runtime.list(name="lightning")] == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every_n_train_steps": 0}, "every_n_train_steps=0"),
        ({"every_n_train_steps": 2.5}, "every_n_train_steps=2.5"),
        ({"every_n_epochs": True}, "every_n_epochs=True"),
        ({"train_time_interval": 30}, "positive datetime.timedelta"),
        ({"train_time_interval": datetime.timedelta(0)}, "positive datetime.timedelta"),
        ({"every_n_epochs": 1, "every_n_train_steps": 5}, "mutually exclusive"),
        (
            {"every_n_train_steps": 5, "train_time_interval": datetime.timedelta(minutes=1)},
            "every_n_train_steps, train_time_interval",
        ),
    ],
)
def test_schedules_are_validated_at_construction(kwargs, message):
    with pytest.raises(CheckpointConfigError, match=re.escape(message)):
        CheckpointCallback(**kwargs)


def test_a_pickled_callback_keeps_its_class_and_schedule():
    """Trainers are pickled (spawned DDP workers): the run-time class comes back."""
    import pickle

    cb = pickle.loads(pickle.dumps(CheckpointCallback(every_n_train_steps=3, monitor="val_loss")))
    assert isinstance(cb, CheckpointCallback) and isinstance(cb, pl.Callback)
    assert (cb.every_n_train_steps, cb.every_n_epochs, cb.monitor) == (3, None, "val_loss")


@pytest.mark.parametrize("val_every", [2, 3, 6])
@pytest.mark.parametrize("every_n", [2, 3])
@pytest.mark.parametrize("crash_at", [5, 9])
def test_step_saves_resume_bitwise_identical_whatever_the_validation_interval(
    tmp_path, val_every, every_n, crash_at
):
    """Mid-epoch validation (val_check_interval) on, before or between the step saves: a save
    due where Lightning validates is made at the validation's end (a fit resumed from it skips
    that validation, whose loader draws from torch's RNG), so every resume is bitwise
    identical to the uninterrupted fit."""
    options = {"val_check_interval": val_every}
    straight, _ = _fit_mid_epoch(
        _runtime(tmp_path / "s", tmp_path, 0),
        tmp_path,
        trainer_options=options,
        every_n_train_steps=every_n,
    )
    with pytest.raises(Crash):
        _fit_mid_epoch(
            _runtime(tmp_path / "c", tmp_path, 0),
            tmp_path,
            crash_at_step=crash_at,
            trainer_options=options,
            every_n_train_steps=every_n,
        )
    retry = _runtime(tmp_path / "c", tmp_path, 1)
    assert retry.info.metadata["step"] == crash_at // every_n * every_n
    resumed, _ = _fit_mid_epoch(
        retry, tmp_path, seed=99, trainer_options=options, every_n_train_steps=every_n
    )
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_two_callbacks_in_one_step_each_resume_from_their_own_series(tmp_path):
    """Two fits in one task, each with its own series; the second crashes and the user saves
    their own "mfchckpt" after it.  On retry the task loads the user's checkpoint (the newest),
    yet each callback resumes from the newest checkpoint of its own series: "a" from its end of
    training, "b" from where it crashed."""
    first = _runtime(tmp_path / "c", tmp_path, 0)
    a_straight, _ = _fit_mid_epoch(first, tmp_path, name="a", seed=1, every_n_train_steps=3)
    with pytest.raises(Crash):
        _fit_mid_epoch(first, tmp_path, crash_at_step=11, name="b", every_n_train_steps=3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own")
    first.save(path=str(mine), metadata={"what": "my own"})
    retry = _runtime(tmp_path / "c", tmp_path, 1)
    assert retry.info.name == "mfchckpt"

    a = CheckpointCallback(checkpoint=retry, name="a")
    b = CheckpointCallback(checkpoint=retry, name="b")
    assert torch.load(a.ckpt_path, weights_only=True)["global_step"] == 24
    assert torch.load(b.ckpt_path, weights_only=True)["global_step"] == 9
    assert CheckpointCallback(checkpoint=retry).ckpt_path is None  # no "lightning" series
    b_straight, _ = _fit_mid_epoch(
        _runtime(tmp_path / "s", tmp_path, 0), tmp_path, every_n_train_steps=3, name="b"
    )
    b_resumed, _ = _fit_mid_epoch(retry, tmp_path, seed=99, name="b", every_n_train_steps=3)
    for k, v in b_straight.state_dict().items():
        assert torch.equal(v, b_resumed.state_dict()[k]), k

    # Something else saved into a callback's series last: it says so, and starts fresh.
    (mine / "notes.txt").write_text("into a's series")
    retry.save(path=str(mine), name="a")
    with pytest.warns(CheckpointWarning, match="newest checkpoint of series 'a' has no"):
        assert (
            CheckpointCallback(checkpoint=_runtime(tmp_path / "c", tmp_path, 2), name="a").ckpt_path
            is None
        )


# ------------------------------------------------------------------ gradient accumulation
ACCUMULATE = 4  # micro-batches per optimizer step: 12 batches of 4 per epoch, 3 steps


class AccumModule(TinyModule):
    """Crashes at the ``micro``-th micro-batch of the window of optimizer step ``step``; each
    batch takes 2 ms, so a 1 ms ``train_time_interval`` is due at every batch."""

    def __init__(self, crash: tuple[int, int] | None = None):
        super().__init__()
        self.crash = crash

    def training_step(self, batch, i):
        if self.crash == (self.global_step, i % ACCUMULATE):
            raise Crash("simulated crash at step %d, micro-batch %d" % self.crash)
        time.sleep(0.002)
        return super().training_step(batch, i)


def _fit_accum(runtime, tmp_path, schedule, crash=None, seed=0, ckpt_path=False):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    module = AccumModule(crash)
    cb = CheckpointCallback(monitor="val_loss", checkpoint=runtime, **schedule)
    ds = torch.utils.data.TensorDataset(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, [cb], epochs=2, accumulate_grad_batches=ACCUMULATE).fit(
            module,
            ResumableLoader(ds, batch_size=4),
            torch.utils.data.DataLoader(ds, batch_size=16),
            ckpt_path=cb.ckpt_path if ckpt_path is False else ckpt_path,
            weights_only=True,
        )
    return module


def _micro_batches_trained(ref) -> int:
    """How many training batches the fit had run when it wrote this checkpoint."""
    with ref.open("lightning.ckpt") as f:
        loops = torch.load(f, weights_only=True)["loops"]["fit_loop"]
    return loops["epoch_loop.batch_progress"]["total"]["ready"]


def _assert_same_weights(a, b):
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


SCHEDULES = [
    {"every_n_train_steps": 1},
    {"train_time_interval": datetime.timedelta(milliseconds=1)},
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["steps", "time"])
def test_with_gradient_accumulation_saves_fall_on_optimizer_steps_and_each_resumes_bitwise(
    tmp_path, schedule
):
    """accumulate_grad_batches=4: the step and time schedules save only after a batch that
    ended an optimizer step (never at step 0, after 1 of 4 micro-batches, whose gradients no
    checkpoint holds), and a fit resumed from any of those saves ends bitwise identical to the
    uninterrupted one."""
    straight = _fit_accum(_runtime(tmp_path / "s", tmp_path, 0), tmp_path, schedule)
    reader = _runtime(tmp_path / "s", tmp_path, 1)
    saves = reader.list(name="lightning")
    assert [r.metadata["step"] for r in saves] == [6, 5, 4, 3, 2, 1]
    assert [_micro_batches_trained(r) for r in saves] == [24, 20, 16, 12, 8, 4]
    for ref in saves:
        where = tmp_path / ("from-%d" % ref.metadata["step"])
        path = reader.load(ref, path=str(where))
        other = _runtime(tmp_path / ("r%d" % ref.metadata["step"]), tmp_path, 0)
        resumed = _fit_accum(
            other, tmp_path, schedule, seed=99, ckpt_path=os.path.join(path, "lightning.ckpt")
        )
        _assert_same_weights(straight, resumed)
        # The resumed fit never saves again the step it started at.
        assert [r.metadata["step"] for r in other.list(name="lightning")] == list(
            range(6, ref.metadata["step"], -1)
        )


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["steps", "time"])
def test_with_gradient_accumulation_a_second_crash_after_a_resume_still_resumes_bitwise(
    tmp_path, schedule
):
    """Attempt 0 crashes inside the window of step 0 (nothing saved: a retry starts afresh),
    attempt 1 inside that of step 2 (saved steps 1 and 2), attempt 2 resumes from step 2 and
    crashes again before step 3 without saving anything (no repeated save of step 2 after its
    first micro-batch), and attempt 3 resumes from step 2: bitwise identical throughout."""
    straight = _fit_accum(_runtime(tmp_path / "s", tmp_path, 0), tmp_path, schedule)
    root = tmp_path / "c"
    for attempt, crash, steps in ((0, (0, 2), []), (1, (2, 2), [2, 1]), (2, (2, 3), [])):
        runtime = _runtime(root, tmp_path, attempt)
        with pytest.raises(Crash):
            # Attempt 1 starts afresh, seeded as the user's script seeds every attempt; the
            # resumed ones get other seeds: the checkpoint restores the RNG states.
            _fit_accum(runtime, tmp_path, schedule, crash=crash, seed=attempt // 2 * attempt)
        assert [r.metadata["step"] for r in runtime.list(name="lightning", attempt=attempt)] == (
            steps
        )
    last = _runtime(root, tmp_path, 3)
    assert last.info.metadata["step"] == 2 and last.info.attempt == 1
    _assert_same_weights(straight, _fit_accum(last, tmp_path, schedule, seed=3))


# ------------------------------------------------------------------ an epoch's last batch
def _fit_boundary(runtime, tmp_path, accumulate, every_n, trainer_options, seed=0, ckpt_path=None):
    """6 batches of 8 per epoch, 2 epochs; one step save every ``every_n`` optimizer steps."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    module = TinyModule()
    cb = CheckpointCallback(monitor="val_loss", checkpoint=runtime, every_n_train_steps=every_n)
    ds = torch.utils.data.TensorDataset(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(
            tmp_path, [cb], epochs=2, accumulate_grad_batches=accumulate, **trainer_options
        ).fit(
            module,
            ResumableLoader(ds, batch_size=8),
            torch.utils.data.DataLoader(ds, batch_size=16),
            ckpt_path=ckpt_path,
            weights_only=True,
        )
    return module


@pytest.mark.parametrize("accumulate, every_n", [(1, 3), (4, 1)], ids=["acc1", "acc4"])
@pytest.mark.parametrize("val_every_n_epochs", [1, 2], ids=["val-each-epoch", "val-every-2"])
@pytest.mark.parametrize("val_check", [3, 4], ids=["val-divides", "val-not-dividing"])
def test_a_step_save_after_an_epochs_last_batch_resumes_bitwise_with_or_without_validation(
    tmp_path, accumulate, every_n, val_every_n_epochs, val_check
):
    """Epoch 0's last batch is followed by validation (val_check_interval 3 divides the epoch's
    6 batches, check_val_every_n_epoch=1) or not (interval 4, or validation every 2nd epoch).
    Without it, a fit resumed from a save made in that batch's hook would restart "on train
    batch end" and make a val loader iterator the uninterrupted fit never made (one draw from
    torch's RNG): the callback saves at the epoch's end instead, as every_n_epochs does.  A fit
    resumed from every save before the end of training ends bitwise identical."""
    options = {"val_check_interval": val_check, "check_val_every_n_epoch": val_every_n_epochs}
    straight = _fit_boundary(
        _runtime(tmp_path / "s", tmp_path, 0), tmp_path, accumulate, every_n, options
    )
    reader = _runtime(tmp_path / "s", tmp_path, 1)
    saves = reader.list(name="lightning")
    steps_per_epoch = 6 // accumulate + (6 % accumulate > 0)
    assert [r.metadata["step"] for r in saves] == list(range(2 * steps_per_epoch, 0, -every_n))
    # Among them the one after epoch 0's last batch (micro-batch 6), as epoch 0's.
    assert any(_micro_batches_trained(r) == 6 and r.metadata["epoch"] == 0 for r in saves)
    for ref in saves[1:]:  # the newest is the end of training: nothing left to resume
        where = tmp_path / ("from-%d" % ref.metadata["step"])
        path = reader.load(ref, path=str(where))
        resumed = _fit_boundary(
            _runtime(tmp_path / ("r%d" % ref.metadata["step"]), tmp_path, 0),
            tmp_path,
            accumulate,
            every_n,
            options,
            seed=99,
            ckpt_path=os.path.join(path, "lightning.ckpt"),
        )
        _assert_same_weights(straight, resumed)
