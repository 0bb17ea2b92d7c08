"""Small sharp edges of the first hour (issue 15 item 8), in one real flow (and the callback's
class mechanics in this process):

- ``current.checkpoint`` in a step without ``@checkpoint`` raises ``CheckpointNotEnabled``
  naming the step and what to add (was: Current's bare ``AttributeError``), while
  ``hasattr(current, "checkpoint")`` stays False there and True in a ``@checkpoint`` step;
- ``CheckpointCallback`` and the exception classes are importable from ``metaflow``, and the
  callback imported that way trains and saves in a Lightning fit.
"""

from __future__ import annotations

import pytest

from integration.flowrun import local_root, local_store, run_flow, single_task, stored_headers

pytest.importorskip("torch")
pytest.importorskip("pytorch_lightning")

from metaflow import CheckpointCallback  # noqa: E402

FLOW = """\
from metaflow import (
    CheckpointCallback,
    CheckpointConfigError,
    CheckpointNotEnabled,
    FlowSpec,
    checkpoint,
    current,
    step,
)


class EdgesFlow(FlowSpec):
    @step
    def start(self):
        self.has_checkpoint = hasattr(current, "checkpoint")
        self.in_current = "checkpoint" in current
        try:
            current.checkpoint.directory
        except CheckpointNotEnabled as exc:
            self.caught = {
                "attribute_error": isinstance(exc, AttributeError),
                "config_error": isinstance(exc, CheckpointConfigError),
                "message": str(exc),
            }
        self.next(self.train)

    @checkpoint
    @step
    def train(self):
        import torch

        try:
            import lightning.pytorch as pl
        except ImportError:
            import pytorch_lightning as pl

        class Tiny(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Linear(2, 1)

            def training_step(self, batch, _):
                x, y = batch
                loss = torch.nn.functional.mse_loss(self.net(x), y)
                self.log("train_loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        x = torch.linspace(-1, 1, 16).reshape(8, 2)
        data = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4
        )
        self.has_checkpoint = hasattr(current, "checkpoint")
        cb = CheckpointCallback(monitor="train_loss")
        self.callback_types = [isinstance(cb, CheckpointCallback), isinstance(cb, pl.Callback)]
        trainer = pl.Trainer(
            max_epochs=2,
            callbacks=[cb],
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Tiny(), data, ckpt_path=cb.ckpt_path)
        self.last_key = cb.last_reference.key
        # Metaflow ignores warnings in a task; ours must still be shown, once per save.
        for value in (float("nan"), float("inf")):
            current.checkpoint.save(name="nonfinite", metadata={"loss": value})
        self.next(self.forgot)

    @step
    def forgot(self):
        print("before the access")
        current.checkpoint.save()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EdgesFlow()
"""


@pytest.mark.flow
def test_current_checkpoint_without_the_decorator_and_the_short_import_path(flow_env):
    env, tmp = flow_env
    flow = tmp / "edges_flow.py"
    flow.write_text(FLOW)
    result = run_flow(flow, env, tmp, expect="failed")

    # A step without @checkpoint: hasattr is False, the access names the step and the fix, and
    # the error is both a CheckpointConfigError and an AttributeError.
    start = single_task(result.run, "start").data
    assert start.has_checkpoint is False and start.in_current is False
    assert start.caught["attribute_error"] and start.caught["config_error"]
    assert start.caught["message"] == (
        "current.checkpoint is only available in a step decorated with @checkpoint, and step "
        "'start' of EdgesFlow has no @checkpoint: add @checkpoint above @step (or run with "
        "--with checkpoint)."
    )

    # Uncaught, it ends the task with Metaflow's one-line error, not a traceback.
    forgot = "\n".join(line.msg for line in result.lines("forgot"))
    assert "before the access" in forgot, result.describe()
    assert "@checkpoint missing:" in forgot
    assert "step 'forgot' of EdgesFlow has no @checkpoint: add @checkpoint above @step" in forgot
    assert "Traceback" not in forgot and "AttributeError" not in forgot

    # `from metaflow import CheckpointCallback` is the real callback: a Lightning Callback that
    # saved every epoch through current.checkpoint.
    train = single_task(result.run, "train").data
    assert train.has_checkpoint is True
    assert train.callback_types == [True, True]
    headers = stored_headers(local_store(local_root(tmp)), "user:tester", "EdgesFlow", "train")
    assert train.last_key in {h.key for h in headers}
    names = [h.name for h in headers]
    assert names.count("lightning") == 2 and names.count("best") >= 1, names  # 2 epochs

    # Our warnings reach the task's output although Metaflow ignores warnings in a task: one
    # CheckpointMetadataWarning per save whose metadata held NaN/inf (two saves, two lines).
    out = result.stdout + result.stderr
    said = "metadata['loss'] is NaN or infinite: stored as null"
    assert out.count(said) == 2 and "CheckpointMetadataWarning" in out, result.describe()


class EveryTwo(CheckpointCallback):
    """A user's subclass of the callback."""

    def __init__(self, **kwargs):
        super().__init__(every_n_epochs=2, **kwargs)


def test_the_callback_from_metaflow_is_a_lightning_callback_that_copies_and_pickles():
    """``from metaflow import CheckpointCallback`` builds a Lightning ``Callback`` on creation:
    for the class itself and for a user's subclass, with the same state key Lightning stores
    in its checkpoints, and instances survive deepcopy and pickle (Lightning and DDP copy
    callbacks)."""
    import copy
    import pickle

    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl

    for cb in (CheckpointCallback(monitor="val_loss", mode="max"), EveryTwo(monitor="loss")):
        assert isinstance(cb, CheckpointCallback) and isinstance(cb, pl.Callback)
        assert type(cb).__name__ == type(cb).__mro__[1].__name__  # the public class's name
        assert cb.state_key.startswith(type(cb).__qualname__ + "{")
        for twin in (copy.deepcopy(cb), pickle.loads(pickle.dumps(cb))):
            assert type(twin) is type(cb) and twin.__dict__ == cb.__dict__
    assert EveryTwo().every_n_epochs == 2
    assert CheckpointCallback(monitor="val_loss").state_key == (
        "CheckpointCallback{'monitor': 'val_loss', 'name': 'lightning'}"  # its default series
    )


def test_current_checkpoint_outside_any_step_says_where_to_use_it(tmp_path):
    """In a notebook or script (no task), the error says it is not a step and points at
    @checkpoint and, for a subprocess of a step, at Checkpoint(init_dir=True)."""
    import subprocess
    import sys

    code = (
        "from metaflow import CheckpointNotEnabled, current\n"
        "print(hasattr(current, 'checkpoint'))\n"
        "try:\n"
        "    current.checkpoint\n"
        "except CheckpointNotEnabled as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [
        "False",
        "current.checkpoint is only available in a step decorated with @checkpoint, and this "
        "code does not run in a Metaflow step: use it in a step decorated with @checkpoint; in a "
        "subprocess of such a step (e.g. a torchrun worker) use Checkpoint(init_dir=True).",
    ]
