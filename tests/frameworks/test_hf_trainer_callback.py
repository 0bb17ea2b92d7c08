"""HFCheckpointCallback through a real checkpoint runtime: what each save_strategy saves, the
best series and save_total_limit, and its errors (bad arguments, no transformers)."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from unprivileged import run_unprivileged, world_tmpdir  # noqa: E402

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
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.hf_trainer import (  # noqa: E402
    TRAINER_STATE,
    HFCheckpointCallback,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (  # noqa: E402
    LocalStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (  # noqa: E402
    build_runtime,
)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 32, (n, 8), generator=g)
        self.y = self.x.sum(dim=1) % 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def _runtime(tmp_path, attempt=0, storage=None):
    store = CheckpointStore(storage or LocalStorage(str(tmp_path / "store")))
    scope = Scope("user:tester", "HFFlow", "train", "_", "1", "2", attempt)
    directory = tmp_path / ("dir-%d" % attempt)
    directory.mkdir()
    runtime = build_runtime(store, scope, str(directory), log=lambda msg: None)
    runtime.load_initial(resolve(store.storage, "fresh", scope))
    return runtime


def _train(tmp_path, runtime, name="hf_trainer", callbacks=(), **args):
    """2 epochs of 4 steps of a tiny BERT built from a config (nothing downloaded)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    options = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    options.update(args)
    cb = HFCheckpointCallback(checkpoint=runtime, name=name)
    trainer = transformers.Trainer(
        model=transformers.BertForSequenceClassification(config),
        args=transformers.TrainingArguments(**options),
        train_dataset=Pairs(32, 0),
        eval_dataset=Pairs(16, 1),
        callbacks=[cb, *callbacks],
    )
    trainer.train(resume_from_checkpoint=cb.resume_from_checkpoint)
    return trainer, cb


def _steps(runtime, name="hf_trainer"):
    return [r.metadata["step"] for r in runtime.list(name=name)]


def test_steps_strategy_saves_the_trainers_directory_with_step_epoch_and_metrics(tmp_path):
    runtime = _runtime(tmp_path)
    trainer, cb = _train(
        tmp_path, runtime, save_strategy="steps", save_steps=3, eval_strategy="steps", eval_steps=3
    )
    assert _steps(runtime) == [8, 6, 3]  # every 3 steps and the end of training
    assert runtime.list(name="best") == []  # no metric_for_best_model: no best series
    last = runtime.list(name="hf_trainer")[0]
    assert last.key == cb.last_reference.key and last.latest
    assert last.metadata["epoch"] == 2.0
    six = runtime.list(name="hf_trainer")[1].metadata
    assert set(six) == {"step", "epoch", "eval_loss"}  # timings are not metadata
    (logged,) = [h for h in trainer.state.log_history if h.get("step") == 6 and "eval_loss" in h]
    assert six["eval_loss"] == logged["eval_loss"]
    # The Trainer's own checkpoint directory, as written: model, optimizer, scheduler, RNG, state.
    files = {f["path"] for f in last.files}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= files
    with last.open("trainer_state.json") as f:
        assert json.load(f)["global_step"] == 8


def test_epoch_strategy_and_the_best_series_follow_greater_is_better(tmp_path):
    """metric_for_best_model='loss' with greater_is_better=True (a worse loss is 'better'):
    the best series holds the Trainer's own choice, saved with latest=False; with
    save_total_limit=1 one checkpoint of each series stays."""
    runtime = _runtime(tmp_path)
    trainer, cb = _train(
        tmp_path,
        runtime,
        save_strategy="epoch",
        eval_strategy="epoch",
        metric_for_best_model="loss",
        greater_is_better=True,
        save_total_limit=1,
    )
    losses = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    assert sorted(losses) == [4, 8]
    assert _steps(runtime) == [8]  # save_total_limit=1: the newest
    best_step = 8 if losses[8] > losses[4] else 4
    (best,) = runtime.list(name="best")
    assert best.metadata["step"] == best_step == trainer.state.best_global_step
    assert best.metadata["eval_loss"] == max(losses.values()) and not best.latest
    assert best.key == cb.best_reference.key


def test_best_strategy_saves_only_improvements(tmp_path):
    runtime = _runtime(tmp_path)
    trainer, _ = _train(
        tmp_path,
        runtime,
        save_strategy="best",
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="loss",
    )
    losses = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    improved, best = [], float("inf")
    for s, loss in losses:
        if loss < best:
            improved.append(s)
            best = loss
    assert _steps(runtime) == improved[::-1]
    assert _steps(runtime, "best") == improved[::-1]  # every save is a new best


def test_without_save_total_limit_every_save_stays_and_no_strategy_warns(tmp_path):
    runtime = _runtime(tmp_path)
    _train(tmp_path, runtime, save_strategy="steps", save_steps=1)
    assert _steps(runtime) == list(range(8, 0, -1))
    other = tmp_path / "other"
    other.mkdir()
    runtime = _runtime(other)
    with pytest.warns(CheckpointWarning, match="save_strategy='no'"):
        _train(other, runtime, save_strategy="no")
    assert runtime.list() == []


def test_save_total_limit_keeps_a_pinned_checkpoint(tmp_path):
    """Old checkpoints beyond the limit are deleted, but never a pinned one."""
    from metaflow import Checkpoint

    runtime = _runtime(tmp_path)
    _train(tmp_path, runtime, save_strategy="steps", save_steps=2, max_steps=2)
    Checkpoint().pin(runtime.list()[0])
    _train(tmp_path, runtime, save_strategy="steps", save_steps=2, save_total_limit=2)
    assert _steps(runtime) == [8, 6, 2]


def test_bad_arguments_outside_a_step_and_pickling():
    with pytest.raises(CheckpointConfigError, match="two different series names"):
        HFCheckpointCallback(name="x", best_name="x")
    with pytest.raises(CheckpointConfigError, match="invalid"):
        HFCheckpointCallback(name="a/b")
    with pytest.raises(CheckpointConfigError, match="@checkpoint"):
        HFCheckpointCallback().resume_from_checkpoint  # noqa: B018
    cb = pickle.loads(pickle.dumps(HFCheckpointCallback(best_name="top")))
    assert isinstance(cb, HFCheckpointCallback) and isinstance(cb, transformers.TrainerCallback)
    assert cb.best_name == "top"


def test_without_transformers_creating_one_names_the_extra(tmp_path):
    """``from metaflow import HFCheckpointCallback`` works without transformers; creating one
    raises CheckpointDependencyError naming the package and the extra."""
    shadow = tmp_path / "shadow" / "transformers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named %r" % __name__, name=__name__)\n'
    )
    code = (
        "import sys\n"
        "from metaflow import HFCheckpointCallback, CheckpointDependencyError\n"
        "assert 'transformers' not in sys.modules or True\n"
        "try:\n"
        "    HFCheckpointCallback()\n"
        "except CheckpointDependencyError as exc:\n"
        "    print('RAISED', exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(shadow.parent), USER="tester")
    with warnings.catch_warnings():
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    assert "RAISED" in done.stdout and "'transformers'" in done.stdout
    assert 'pip install "metaflow-checkpointing[transformers]"' in done.stdout


def _mine(runtime, tmp_path, name="mfchckpt"):
    mine = tmp_path / ("mine-" + name)
    mine.mkdir()
    (mine / "vocab.txt").write_text("my tokenizer")
    return runtime.save(path=str(mine), metadata={"what": "my own"}, name=name)


def test_save_total_limit_deletes_only_what_this_callback_saved(tmp_path):
    """The user's own checkpoints, of "mfchckpt" and of the callback's own series, and an
    earlier attempt's, survive save_total_limit=1: only the callback's older saves go."""
    first = _runtime(tmp_path, 0)
    _train(tmp_path, first, save_strategy="steps", save_steps=2)  # attempt 0: 4 saves
    runtime = _runtime(tmp_path, 1)
    kept = {_mine(runtime, tmp_path).key, _mine(runtime, tmp_path, "hf_trainer").key}
    kept |= {r.key for r in first.list(name="hf_trainer", attempt=0)}
    _, cb = _train(
        tmp_path / "again",
        runtime,
        name="hf_trainer",
        save_strategy="steps",
        save_steps=2,
        save_total_limit=1,
        num_train_epochs=4,  # resumes from attempt 0's step 8, saves 10, 12, 14, 16
    )
    left = {r.key for r in runtime.list(attempt="all")}
    assert kept <= left  # nothing it did not save is deleted
    assert left - kept == {cb.last_reference.key}  # of its own saves, only the newest stays
    assert cb.last_reference.metadata["step"] == 16


def test_two_callbacks_in_one_step_each_resume_from_their_own_series(tmp_path):
    """Two Trainers in one task (series "a": 1 epoch, "b": 2 epochs) and the user's own save
    after them: on retry the task loads the user's checkpoint, yet each callback resumes from
    the newest of its own series, and the default series ("hf_trainer") has none."""
    first = _runtime(tmp_path, 0)
    _train(tmp_path / "a", first, name="a", num_train_epochs=1, save_strategy="epoch")
    _train(tmp_path / "b", first, name="b", save_strategy="epoch")
    _mine(first, tmp_path)
    retry = _runtime(tmp_path, 1)
    assert retry.info.name == "mfchckpt"

    def step_of(cb):
        with open(os.path.join(cb.resume_from_checkpoint, "trainer_state.json")) as f:
            return json.load(f)["global_step"]

    a = HFCheckpointCallback(checkpoint=retry, name="a")
    b = HFCheckpointCallback(checkpoint=retry, name="b")
    assert (step_of(a), step_of(b)) == (4, 8)
    assert HFCheckpointCallback(checkpoint=retry).resume_from_checkpoint is None


class CrashAt(transformers.TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash at step %d" % self.step)


def _weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


#: load_best_model_at_end with a checkpoint and an evaluation every 2 steps, where "best" is the
#: highest loss (greater_is_better=True): the best is an early checkpoint, never the last.
BEST_NOT_LAST = dict(
    save_strategy="steps",
    save_steps=2,
    eval_strategy="steps",
    eval_steps=2,
    metric_for_best_model="loss",
    greater_is_better=True,
    load_best_model_at_end=True,
)


def test_load_best_model_at_end_survives_a_retry_on_another_machine(tmp_path):
    """load_best_model_at_end with the best checkpoint not the last (greater_is_better=True on
    the loss): attempt 0 crashes at step 5, and the retry runs where attempt 0's output_dir is
    gone (another pod, another output_dir).  trainer_state.json names the best as a path of
    that pod; the callback restores it from the store into this output_dir and points the
    state at it, so the retry ends with the best model, bitwise the uninterrupted run's."""
    args = BEST_NOT_LAST
    full = tmp_path / "full"
    full.mkdir()
    straight, _ = _train(full, _runtime(full), **args)
    best_step = straight.state.best_global_step
    assert best_step not in (None, 8)  # the best is not the last: loading it matters

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    with pytest.raises(RuntimeError, match="crash at step 5"):
        _train(crashed, _runtime(crashed, 0), callbacks=[CrashAt(5)], **args)
    shutil.rmtree(crashed / "out")  # the retry's machine never had attempt 0's files
    pod = crashed / "pod2"  # and its own output_dir
    retry = _runtime(crashed, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        resumed, cb = _train(pod, retry, **args)
    assert cb.resume_from_checkpoint is not None  # resumed from step 4
    assert resumed.state.best_model_checkpoint == str(pod / "out" / ("checkpoint-%d" % best_step))
    assert torch.equal(_weights(straight), _weights(resumed))
    # cb.best_reference is the run's best, saved by attempt 0 or by this one.
    assert cb.best_reference.metadata["step"] == best_step


class FaultyBlobs(LocalStorage):
    """A local store whose blob reads fail (``fail``), or whose first blob read finds that
    another machine sharing ``output_dir`` has just restored the same checkpoint (``race``)."""

    fail = False
    race: object = None  # a directory to create, with a file, at the first blob read

    def local_path(self, key):
        # No direct reads of the stored files: every blob goes through the gets below.
        return None if key.startswith("blobs/") else super().local_path(key)

    def _blob_read(self, key):
        if not key.startswith("blobs/"):
            return
        if self.fail:
            raise PermissionError("injected: the store refuses %s" % key)
        if self.race is not None:
            os.makedirs(self.race)
            (self.race / "from-the-other-machine").write_text("theirs")
            self.race = None

    def _get_bytes(self, key, start, length):
        self._blob_read(key)
        return super()._get_bytes(key, start, length)

    def _get_file(self, key, local_path):
        self._blob_read(key)
        super()._get_file(key, local_path)


def _saved(runtime, tmp_path, step, name, latest):
    """A checkpoint directory as the callback saves it (the Trainer's files, metadata step)."""
    folder = tmp_path / ("saved-%s-%d" % (name, step))
    folder.mkdir()
    (folder / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    (folder / "model.safetensors").write_bytes(os.urandom(64 << 10))
    return runtime.save(path=str(folder), metadata={"step": step}, name=name, latest=latest)


def _begin(cb, output_dir, load_best, **state):
    """The callback's on_train_begin of a train() resumed at ``state['global_step']``."""
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        save_strategy="steps",
        eval_strategy="steps",
        metric_for_best_model="loss",
        load_best_model_at_end=load_best,
        report_to="none",
        use_cpu=True,
    )
    trainer_state = transformers.TrainerState(**state)
    cb.on_train_begin(args, trainer_state, transformers.TrainerControl())
    return trainer_state


@pytest.mark.parametrize("fault", ["the load fails", "another machine renames first"])
def test_restoring_the_best_never_leaves_a_partial_directory_in_output_dir(tmp_path, fault):
    """The best checkpoint is loaded into a hidden .checkpoint-<step>-* directory of output_dir
    (a whole model) and renamed: a load that fails, or a rename lost to another machine
    sharing output_dir, removes it; the state then points at the other machine's copy."""
    storage = FaultyBlobs(str(tmp_path / "store"))
    first = _runtime(tmp_path, 0, storage)
    _saved(first, tmp_path, 2, "best", latest=False)
    _saved(first, tmp_path, 4, "hf_trainer", latest=True)
    retry = _runtime(tmp_path, 1, storage)  # loads step 4, before any fault
    out = tmp_path / "pod2" / "out"
    target = out / "checkpoint-2"
    cb = HFCheckpointCallback(checkpoint=retry)
    recorded = str(tmp_path / "pod1" / "out" / "checkpoint-2")  # not on this machine
    if fault == "the load fails":
        storage.fail = True
        with pytest.raises(Exception, match="injected: the store refuses"):
            _begin(cb, out, True, global_step=4, best_global_step=2, best_model_checkpoint=recorded)
        assert not target.exists()
    else:
        storage.race = target
        state = _begin(
            cb, out, True, global_step=4, best_global_step=2, best_model_checkpoint=recorded
        )
        assert state.best_model_checkpoint == str(target)
        assert os.listdir(target) == ["from-the-other-machine"]  # theirs, untouched
    assert [p for p in os.listdir(out) if p.startswith(".checkpoint-")] == []


def test_a_retry_never_takes_a_best_saved_after_the_step_it_resumed_at(tmp_path):
    """A Trainer without best_global_step resumed at step 4: the best an earlier attempt saved
    at step 6 (after that checkpoint: its latest save was lost) is not this run's best yet;
    cb.best_reference is the best of step 2, as the resumed state knows it."""
    first = _runtime(tmp_path, 0)
    two = _saved(first, tmp_path, 2, "best", latest=False)
    _saved(first, tmp_path, 4, "hf_trainer", latest=True)
    _saved(first, tmp_path, 6, "best", latest=False)
    cb = HFCheckpointCallback(checkpoint=_runtime(tmp_path, 1))
    _begin(cb, tmp_path / "out", False, global_step=4, best_global_step=None)
    assert cb.best_reference is not None and cb.best_reference.key == two.key


def test_a_best_deleted_from_the_store_ends_with_the_last_model_and_says_so(tmp_path):
    """The resumed run's best checkpoint is gone from the store (retention, gc, a manual
    delete) and from this machine: the warning says what happens, and it does. The Trainer
    keeps the run's best_metric (the best the run has seen), so a later evaluation is loaded at
    the end only if it beats it; here none does, and the retry ends with its last model."""
    args = BEST_NOT_LAST
    with pytest.raises(RuntimeError, match="crash at step 7"):
        _train(tmp_path, _runtime(tmp_path, 0), callbacks=[CrashAt(7)], **args)
    recorded = json.loads((tmp_path / "out" / "checkpoint-6" / TRAINER_STATE).read_text())
    best_step, best_metric = recorded["best_global_step"], recorded["best_metric"]
    assert best_step in (2, 4)  # not the checkpoint the retry resumes from
    shutil.rmtree(tmp_path / "out")  # another machine: not on disk here
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")))
    first = _runtime(tmp_path, 1)
    for name in ("best", "hf_trainer"):  # and deleted from the store
        for ref in first.list(name=name):
            if ref.metadata["step"] == best_step:
                store.delete(ref.key)
    pod = tmp_path / "pod2"
    with pytest.warns(CheckpointWarning) as caught:
        resumed, cb = _train(pod, _runtime(tmp_path, 2), **args)
    assert cb.resume_from_checkpoint is not None  # resumed from step 6
    message = " ".join(str(w.message) for w in caught)
    assert "best checkpoint (step %d, eval_loss %s)" % (best_step, best_metric) in message
    assert "ends with the last model unless a later evaluation beats that eval_loss" in message
    # What the message says happens: the run's best stays the lost one, nothing is loaded at
    # the end, and the model is the last one (bitwise the retry's step-8 checkpoint).
    assert resumed.state.best_global_step == best_step
    assert resumed.state.best_metric == best_metric
    assert resumed.state.best_model_checkpoint is None
    from safetensors.torch import load_file

    last = load_file(str(pod / "out" / "checkpoint-8" / "model.safetensors"))
    model = resumed.model.state_dict()
    assert last and all(torch.equal(model[k], v) for k, v in last.items())


def _begin_read_only(tmp: str) -> str:
    """As an unprivileged user (root writes anywhere): a retry whose output_dir is read-only."""
    out = os.path.join(tmp, "out")
    cb = HFCheckpointCallback(checkpoint=_RETRY[0])
    try:
        _begin(cb, out, True, global_step=4, best_global_step=2, best_model_checkpoint="/gone")
    except CheckpointConfigError as exc:
        return "%s|%s" % (type(exc.__cause__).__name__, exc)
    return "no error"


_RETRY: list = []  # the retry's runtime, made by root and inherited by the forked child


def test_a_read_only_output_dir_fails_the_best_restore_with_a_clear_error(tmp_path):
    """Restoring the best into a read-only output_dir stops train() at its start with a
    CheckpointConfigError naming output_dir (the Trainer's own saves would fail there too),
    not a bare PermissionError from a temporary directory."""
    with world_tmpdir() as tmp:
        root = pathlib.Path(tmp)
        first = _runtime(root, 0)
        _saved(first, root, 2, "best", latest=False)
        _saved(first, root, 4, "hf_trainer", latest=True)
        _RETRY[:] = [_runtime(root, 1)]
        os.makedirs(os.path.join(tmp, "out"))
        os.chmod(os.path.join(tmp, "out"), 0o555)
        try:
            result = run_unprivileged(_begin_read_only, tmp)
        finally:
            _RETRY.clear()
        cause, message = result.split("|", 1)
        assert cause == "PermissionError"
        assert os.path.join(tmp, "out") in message
        assert "is not writable" in message and "best checkpoint (step 2)" in message
        assert os.listdir(os.path.join(tmp, "out")) == []
