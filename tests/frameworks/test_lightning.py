"""The Lightning callback: last and best checkpoints through a real checkpoint runtime, and a
crashed fit that resumes on the retry and ends bitwise identical to an uninterrupted one."""

from __future__ import annotations

import random
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


def _trainer(root, callbacks, epochs=4):
    return pl.Trainer(
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


def _fit(runtime, tmp_path, crash_at_step=None, seed=0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    module = TinyModule(crash_at_step)
    cb = CheckpointCallback(monitor="val_loss", checkpoint=runtime)
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
    last = first.list(name="mfchckpt")
    assert [r.metadata["epoch"] for r in last] == [1, 0]
    assert [r.metadata["step"] for r in last] == [12, 6]

    # Attempt 1: another seed, as a new process would have; the callback finds the file.
    retry = _runtime(crashed_root, tmp_path, 1)
    assert retry.is_loaded
    resumed, cb = _fit(retry, tmp_path, seed=1234)
    assert cb.ckpt_path is not None and cb.ckpt_path.endswith("lightning.ckpt")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [r.metadata["epoch"] for r in retry.list(name="mfchckpt")] == [3, 2, 1, 0]


def test_best_and_last_series_carry_the_metric(tmp_path):
    runtime = _runtime(tmp_path / "store", tmp_path, 0)
    _, cb = _fit(runtime, tmp_path)
    last = runtime.list(name="mfchckpt")
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


def test_bad_arguments_and_outside_a_checkpoint_step():
    with pytest.raises(CheckpointConfigError, match="mode"):
        CheckpointCallback(mode="lowest")
    with pytest.raises(CheckpointConfigError, match="every_n_epochs"):
        CheckpointCallback(every_n_epochs=0)
    with pytest.raises(CheckpointConfigError, match="filename"):
        CheckpointCallback(filename="a/b.ckpt")
    with pytest.raises(CheckpointConfigError, match="@checkpoint"):
        CheckpointCallback().ckpt_path  # noqa: B018
