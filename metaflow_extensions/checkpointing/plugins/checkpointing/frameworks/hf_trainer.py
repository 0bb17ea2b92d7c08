"""A Hugging Face ``transformers`` ``TrainerCallback`` that checkpoints through
``current.checkpoint``.

``from metaflow import HFCheckpointCallback`` never imports transformers (``import metaflow``
imports this module): it is imported when a callback is created, and a missing one fails right
there with ``CheckpointDependencyError`` naming the ``transformers`` extra.  The instance derives
from ``transformers.TrainerCallback`` (``late_base.py``), so the Trainer calls every hook.

The Trainer keeps deciding when to save (``save_strategy``, ``save_steps``) and writes its own
``checkpoint-<step>`` directory (model, optimizer, scheduler, scaler, RNG states,
``trainer_state.json``); the callback saves that directory as a checkpoint of the task in
``on_save``.  On ``@retry`` or ``resume`` the task loads it into ``current.checkpoint.directory``
and ``trainer.train(resume_from_checkpoint=cb.resume_from_checkpoint)`` continues from it as
the Trainer continues from its own directories: bitwise identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Callable, Optional

from ..core.scope import validate_name
from ..errors import CheckpointConfigError, CheckpointDependencyError, CheckpointWarning
from . import late_base
from .own_series import own_best, own_latest, own_refs

__all__ = ["HFCheckpointCallback"]

#: Default series: not ``current.checkpoint.save()``'s "mfchckpt", so the user's own saves in
#: the step are never resumed from nor deleted by the callback.
DEFAULT_SERIES = "hf_trainer"

#: What the Trainer writes last into a checkpoint directory (and reads to resume).
TRAINER_STATE = "trainer_state.json"
#: Evaluation outputs that measure the machine, not the model: never metadata.
_TIMINGS = ("_runtime", "_per_second")


def trainer_callback_base() -> type:
    """``transformers.TrainerCallback``, or a :class:`CheckpointDependencyError` naming the
    ``transformers`` extra (module-level: pickled callbacks name it to rebuild their class)."""
    try:
        from transformers import TrainerCallback
    except ImportError as exc:
        raise CheckpointDependencyError.of(
            "HFCheckpointCallback", "transformers", "transformers", exc
        ) from exc
    return TrainerCallback


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class HFCheckpointCallback:
    """Save the ``transformers`` Trainer's checkpoints as checkpoints of the task, and resume
    from them on ``@retry`` and ``resume``.

    Each time the Trainer saves (``TrainingArguments.save_strategy``: ``"steps"`` every
    ``save_steps``, ``"epoch"``, ``"best"``; ``"no"`` saves nothing), its
    ``checkpoint-<step>`` directory is saved as series ``name`` with ``latest=True`` (what a
    retry loads), with metadata ``step`` (global step), ``epoch`` and the evaluation metrics of
    that step (``eval_loss``, ...).  When ``metric_for_best_model`` reaches a new best
    (``greater_is_better`` says which way) the same directory is also saved as series
    ``best_name`` with ``latest=False``: its files are shared, only a manifest is written.

    ``save_total_limit=N`` keeps the N newest checkpoints this callback saved of series
    ``name`` and the newest it saved of ``best_name``, as the Trainer keeps its N newest
    directories and the best one; its older ones are deleted after each save (pinned ones
    stay).  Checkpoints the callback did not save (the user's own, another callback's, an
    earlier attempt's) are never deleted.

    On ``@retry`` or ``resume``, ``resume_from_checkpoint`` is the newest ``latest=True``
    checkpoint of series ``name`` (loaded if the task loaded another series), so two callbacks
    in one step each resume from their own series: give each its own ``name``.

    Parameters
    ----------
    name : str
        Series of the checkpoints a retry resumes from (default ``"hf_trainer"``; not
        ``current.checkpoint``'s ``"mfchckpt"``, so the user's own saves never collide).
    best_name : str
        Series of the best checkpoints (default ``"best"``).
    checkpoint : object, optional
        Where to save: default ``current.checkpoint`` in a ``@checkpoint`` step, else
        ``Checkpoint()`` in a process the task started (``torchrun``, ``accelerate launch``).

    Examples
    --------
    >>> cb = HFCheckpointCallback()
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    >>> trainer.train(resume_from_checkpoint=cb.resume_from_checkpoint)  # None at first

    Raises
    ------
    CheckpointDependencyError
        If transformers cannot be imported.
    CheckpointConfigError
        If ``name`` or ``best_name`` is not a valid series name.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # transformers is imported here, when a callback is made, never by ``import metaflow``.
        return object.__new__(late_base.with_base(cls, trainer_callback_base()))

    def __reduce__(self) -> Any:
        return late_base.reduce(self, trainer_callback_base)

    def __init__(self, name: str = DEFAULT_SERIES, best_name: str = "best", checkpoint: Any = None):
        self.name = validate_name(name)
        self.best_name = validate_name(best_name)
        if self.name == self.best_name:
            raise CheckpointConfigError(
                "HFCheckpointCallback(name=%r, best_name=%r): use two different series names "
                "(a retry resumes from `name`, never from `best_name`)." % (name, best_name)
            )
        self._checkpoint = checkpoint
        self.last_reference: Any = None
        self.best_reference: Any = None
        self._metrics: dict[str, float] = {}
        self._metrics_step: Optional[int] = None
        self._own: set[str] = set()  # keys this callback saved: the only ones it deletes
        self._resume: Any = False  # not yet resolved

    # ------------------------------------------------------------------ where
    @property
    def checkpoint(self) -> Any:
        """The checkpoint object saved to: the one given, else ``current.checkpoint``, else
        ``Checkpoint()`` in a process started by a ``@checkpoint`` task."""
        if self._checkpoint is not None:
            return self._checkpoint
        from metaflow import current

        if hasattr(current, "checkpoint"):
            return current.checkpoint
        from ..task.context import TASK_ENV

        if os.environ.get(TASK_ENV):
            from ..client import Checkpoint

            self._checkpoint = Checkpoint()
            return self._checkpoint
        raise CheckpointConfigError(
            "HFCheckpointCallback saves through current.checkpoint: use it in a step decorated "
            "with @checkpoint (or a process that step started), or pass checkpoint=..."
        )

    @property
    def resume_from_checkpoint(self) -> Optional[str]:
        """The Trainer checkpoint directory to resume from on a ``@retry`` attempt or a
        ``resume``, for ``trainer.train(resume_from_checkpoint=...)``: the newest ``latest=True``
        checkpoint of series ``name`` (the one the task loaded if it is of that series, else
        loaded now); None if there is none (a first attempt)."""
        if getattr(self, "_resume", False) is not False:
            return self._resume
        checkpoint = self.checkpoint
        if hasattr(checkpoint, "info"):
            self._resume = own_latest(checkpoint, self.name, TRAINER_STATE)
            return self._resume
        # A process the task started (Checkpoint()): the task's loaded directory, if any.
        directory = checkpoint.directory
        if directory and os.path.isfile(os.path.join(directory, TRAINER_STATE)):
            return directory
        return None

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
        if strategy == "no":
            warnings.warn(
                "HFCheckpointCallback: TrainingArguments(save_strategy='no') saves nothing, so "
                "a retry starts from scratch; use 'steps', 'epoch' or 'best'.",
                CheckpointWarning,
                stacklevel=2,
            )
        elif getattr(args, "save_only_model", False):
            warnings.warn(
                "HFCheckpointCallback: TrainingArguments(save_only_model=True) saves no "
                "optimizer, scheduler or RNG state, so a retry cannot resume training exactly.",
                CheckpointWarning,
                stacklevel=2,
            )
        if state.global_step:  # resumed from a checkpoint
            # Series best_name is listed at most once per resume, by whichever needs it first.
            best_refs = functools.cache(lambda: own_refs(self.checkpoint, self.best_name))
            self._restore_best(args, state, best_refs)
            if self.best_reference is None and self._best_metric_name(args) is not None:
                # The best saved by an earlier attempt as of the resumed step (never a newer
                # one): cb.best_reference after train() is the run's best, as uninterrupted,
                # even if no later step improves on it.
                self.best_reference = own_best(
                    best_refs(), state.global_step, getattr(state, "best_global_step", None)
                )

    def _restore_best(self, args: Any, state: Any, best_refs: Callable[[], list[Any]]) -> None:
        """Make the resumed state's best checkpoint a directory of this machine.

        ``trainer_state.json`` records the best checkpoint as a path on the machine of the
        attempt that saved it (``<output_dir>/checkpoint-<step>``).  A retry in another pod, or
        with another ``output_dir``, has no such directory: the Trainer drops it, and
        ``load_best_model_at_end`` then ends with the last model, not the best.  So the best
        checkpoint is loaded from the store into ``<output_dir>/checkpoint-<step>``, where the
        uninterrupted run has it, and the state points there.
        """
        recorded = state.best_model_checkpoint
        if recorded is not None and os.path.isdir(recorded):
            return  # a retry on the same machine: the directory is still there
        step = getattr(state, "best_global_step", None)
        if not step and recorded:  # Trainers before best_global_step: the path names it
            match = re.search(r"checkpoint-(\d+)$", os.path.normpath(recorded))
            step = int(match.group(1)) if match else None
        state.best_model_checkpoint = None  # never a path of another machine
        if not step or not getattr(args, "load_best_model_at_end", False):
            return  # nothing reads it but the Trainer's rotation of its own directories
        ref = self._stored_step(step, best_refs)
        if ref is None:
            # state.best_metric stays step N's: it is the best this run has seen, so a later
            # evaluation becomes the best (and is loaded at the end) only if it beats it, as
            # in the uninterrupted run; resetting it would make a worse model "the best".
            metric = self._best_metric_name(args) or "metric"
            warnings.warn(
                "HFCheckpointCallback: the best checkpoint (step %d, %s %s) of the resumed run "
                "is not in series %r or %r (deleted or expired), so load_best_model_at_end ends "
                "with the last model unless a later evaluation beats that %s."
                % (step, metric, state.best_metric, self.best_name, self.name, metric),
                CheckpointWarning,
                stacklevel=3,
            )
            return
        target = os.path.join(args.output_dir, "checkpoint-%d" % step)
        # One process per machine loads it (the others wait, then find it), into a hidden
        # directory renamed at the end: the Trainer never sees a partial checkpoint.
        first = getattr(args, "main_process_first", None)
        with first(local=True, desc="restore best") if first else contextlib.nullcontext():
            if not os.path.isdir(target):
                self._load_into(ref, target, args.output_dir, step)
        state.best_model_checkpoint = target

    def _load_into(self, ref: Any, target: str, output_dir: str, step: int) -> None:
        """Load ``ref`` into a hidden directory of ``output_dir``, then rename it ``target``.

        The hidden directory (a whole model: it may be GBs) never outlives the call: a failed
        load, or a rename lost to another machine sharing ``output_dir``, removes it.
        """
        try:
            os.makedirs(output_dir, exist_ok=True)
            partial = tempfile.mkdtemp(prefix=".checkpoint-%d-" % step, dir=output_dir)
        except OSError as exc:
            # The Trainer saves its checkpoints into output_dir too, so this train() could not
            # go on anyway: say so now, naming the directory, not as a bare OSError.
            raise CheckpointConfigError(
                path=output_dir,
                reason="TrainingArguments(output_dir=...) is not writable (%s: %s), so "
                "HFCheckpointCallback cannot restore the best checkpoint (step %d) there for "
                "load_best_model_at_end, and the Trainer could not save its checkpoints there "
                "either; use a writable output_dir" % (type(exc).__name__, exc, step),
            ) from exc
        try:
            self.checkpoint.load(ref, path=partial)
            try:
                os.rename(partial, target)
            except OSError:  # another machine sharing output_dir restored it first
                if not os.path.isdir(target):
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already if renamed

    def _stored_step(self, step: int, best_refs: Callable[[], list[Any]]) -> Any:
        """The newest checkpoint of step ``step`` of series ``best_name`` (``best_refs()``,
        else series ``name``) this task resumes from: its earlier attempts, or on a ``resume``
        the task it came from."""
        for refs in (best_refs, lambda: own_refs(self.checkpoint, self.name)):
            for ref in refs():
                if (ref.metadata or {}).get("step") == step:
                    return ref
        return None

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> None:
        # The Trainer evaluates, then saves the same step: keep the metrics for its metadata.
        numbers = {}
        for key, value in (metrics or {}).items():
            number = _number(value)
            if number is not None and not key.endswith(_TIMINGS):
                numbers[str(key)] = number
        self._metrics, self._metrics_step = numbers, state.global_step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return  # one writer: the Trainer's files of other processes go to the same place
        folder = os.path.join(args.output_dir, "checkpoint-%d" % state.global_step)
        if not os.path.isfile(os.path.join(folder, TRAINER_STATE)):
            raise CheckpointConfigError(
                "HFCheckpointCallback: the Trainer's checkpoint of step %d is not at %s (a "
                "hyperparameter search writes each trial elsewhere: not supported)."
                % (state.global_step, folder)
            )
        metadata: dict[str, Any] = {"step": state.global_step, "epoch": _number(state.epoch)}
        if self._metrics_step == state.global_step:
            metadata.update(self._metrics)
        checkpoint = self.checkpoint
        self.last_reference = checkpoint.save(
            path=folder, metadata=metadata, name=self.name, latest=True
        )
        self.__dict__.setdefault("_own", set()).add(self.last_reference.key)
        best = self._best_metric_name(args)
        if best is not None and self._is_new_best(state, metadata.get(best)):
            self.best_reference = checkpoint.save(
                path=folder, metadata=metadata, name=self.best_name, latest=False
            )
            self.__dict__.setdefault("_own", set()).add(self.best_reference.key)
        limit = args.save_total_limit
        if limit is not None and limit > 0:
            self._keep_newest(checkpoint, self.name, limit)
            if best is not None:
                self._keep_newest(checkpoint, self.best_name, 1)

    # ------------------------------------------------------------------ best and retention
    @staticmethod
    def _best_metric_name(args: Any) -> Optional[str]:
        """``metric_for_best_model`` as the Trainer reads it from the evaluation metrics."""
        metric = getattr(args, "metric_for_best_model", None)
        if not metric:
            return None
        return metric if metric.startswith("eval_") else "eval_" + metric

    @staticmethod
    def _is_new_best(state: Any, value: Optional[float]) -> bool:
        """Whether the Trainer found a new best at this step (its own decision, which follows
        ``greater_is_better``)."""
        if value is None:
            return False
        best_step = getattr(state, "best_global_step", None)
        if best_step is not None:
            return best_step == state.global_step
        return state.best_metric is not None and value == state.best_metric  # older Trainers

    def _keep_newest(self, checkpoint: Any, name: str, keep: int) -> None:
        """Delete the checkpoints of series ``name`` this callback saved but the ``keep`` newest
        (as a retry orders them); a pinned one is kept, and no one else's is ever touched."""
        from ..client import Checkpoint
        from ..errors import CheckpointConfigError as Refused
        from ..errors import CheckpointNotFound

        own = getattr(self, "_own", set())
        old = [r for r in checkpoint.list(name=name) if r.key in own][keep:]
        if not old:
            return
        client = Checkpoint()
        for ref in old:
            try:
                client.delete(ref)
            except (Refused, CheckpointNotFound):
                pass  # pinned (retention never deletes a pin), or deleted meanwhile
