"""A PyTorch Lightning callback that checkpoints through ``current.checkpoint``.

``from metaflow import CheckpointCallback`` (this module never imports Lightning itself, so
``import metaflow`` stays light).  Lightning is imported when a callback is created: without
it, ``CheckpointCallback(...)`` raises ``CheckpointDependencyError`` naming the extra to install
(``pip install "metaflow-checkpointing[lightning]"``), before any training starts.

It works with ``lightning`` (``lightning.pytorch``) or ``pytorch_lightning``, whichever is
installed (``lightning.pytorch`` first): pass it to the Trainer of the same package.  Creating
one makes an instance of a subclass that also derives from that package's ``Callback``
(``late_base.py``), so ``isinstance(cb, CheckpointCallback)`` and ``isinstance(cb, pl.Callback)``
both hold.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from typing import Any, Optional

from ..core.scope import validate_name
from ..errors import CheckpointConfigError, CheckpointDependencyError
from . import late_base
from .own_series import own_best, own_latest, own_refs
from .torch_util import capture_rng, import_torch, restore_rng

__all__ = ["CheckpointCallback"]

_MODES = ("min", "max")
#: Default series: not ``current.checkpoint.save()``'s "mfchckpt" (see ``own_series.py``).
DEFAULT_SERIES = "lightning"


def lightning_package() -> Any:
    """``lightning.pytorch`` or ``pytorch_lightning``, or a :class:`CheckpointDependencyError`
    naming the ``lightning`` extra."""
    import_torch("CheckpointCallback")
    try:
        import lightning.pytorch as pl
    except ImportError:  # the standalone package
        try:
            import pytorch_lightning as pl
        except ImportError as exc:
            raise CheckpointDependencyError.of(
                "CheckpointCallback", "pytorch_lightning", "lightning", exc
            ) from exc
    return pl


def __getattr__(name: str) -> Any:
    # ``lightning.pl``: the Lightning package the callbacks derive from, imported on first use.
    if name == "pl":
        return lightning_package()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def callback_base() -> type:
    """Lightning's ``Callback`` (module-level: pickled instances name it to rebuild their class)."""
    return lightning_package().Callback


def _whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


class CheckpointCallback:
    """Save Lightning's full training state as checkpoints: the last one (resumed by
    ``@retry`` and ``resume``) and the best one by a monitored metric.

    At the end of every ``every_n_epochs``-th training epoch (after validation), or every
    ``every_n_train_steps`` optimizer steps, or once ``train_time_interval`` has passed (at the
    end of a training batch, as Lightning's ``ModelCheckpoint``), it writes
    ``trainer.save_checkpoint()`` (model, optimizers, LR schedulers, precision scaler, loop
    progress, callback states) plus the RNG states of Python, NumPy and torch into
    ``current.checkpoint.directory`` and saves that file as series ``name`` with
    ``latest=True``.  When ``monitor`` improves, the same file is also saved as series
    ``best_name`` with ``latest=False`` (the blobs are shared: only a manifest is written), so
    a retry never resumes from an older "best" but a later step can load it.  Metadata holds
    ``epoch``, ``step`` (global step) and the monitored value.

    Parameters
    ----------
    monitor : str, optional
        Metric logged with ``self.log`` (e.g. ``"val_loss"``) that decides "best" and is
        stored in every checkpoint's metadata.  None: only the last checkpoint is saved.
    mode : str
        ``"min"`` (default) or ``"max"``: whether a lower or higher ``monitor`` is better.
    every_n_epochs : int, optional
        Save at the end of every this many epochs; default 1 unless ``every_n_train_steps`` or
        ``train_time_interval`` is given.  Every schedule also saves at the end of training.
    every_n_train_steps : int, optional
        Save after every this many optimizer steps (``trainer.global_step``), mid-epoch too.
    train_time_interval : datetime.timedelta, optional
        Save at the end of the first training batch at least this long after the previous
        save (or the start of training).  The three schedules are mutually exclusive, as in
        Lightning's ``ModelCheckpoint``.  The step and time schedules save only after a batch
        that made an optimizer step (with ``accumulate_grad_batches > 1``, at the end of an
        accumulation window), never at step 0, and a resumed fit never saves again the step
        it resumed at: every save resumes bitwise identically.  A save due after a batch that
        Lightning validates after, or after an epoch's last batch, is made at the validation's or
        the epoch's end.
    name : str
        Series of the last checkpoints (default ``"lightning"``; not ``current.checkpoint``'s
        ``"mfchckpt"``, so the user's own saves never collide).  ``ckpt_path`` resumes from the
        newest ``latest=True`` checkpoint of this series: two callbacks in one step each need
        their own ``name``.
    best_name : str
        Series of the best checkpoints (default ``"best"``).
    filename : str
        File name of the Lightning checkpoint in the checkpoint directory.
    checkpoint : object, optional
        Where to save; default ``current.checkpoint`` of the running ``@checkpoint`` step.

    Examples
    --------
    >>> cb = CheckpointCallback(monitor="val_loss")
    >>> trainer = Trainer(max_epochs=10, callbacks=[cb], enable_checkpointing=False)
    >>> trainer.fit(model, data, ckpt_path=cb.ckpt_path, weights_only=True)  # None at first

    Raises
    ------
    CheckpointDependencyError
        If neither ``lightning`` nor ``pytorch_lightning`` (or torch) can be imported.
    CheckpointConfigError
        If an argument is invalid.
    """

    # Defaults for instances unpickled from before these attributes existed.
    every_n_train_steps: Optional[int] = None
    train_time_interval: Optional[datetime.timedelta] = None
    _last_time: Optional[float] = None
    _mid_epoch = False
    _pending_rng: Any = None
    _deferred: Optional[bool] = None  # mid_epoch of a save waiting for a later hook
    _resume: Any = False
    _step_at_batch_start: Optional[int] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Lightning is imported here, when a callback is made, never by ``import metaflow``.
        return object.__new__(late_base.with_base(cls, callback_base()))

    def __reduce__(self) -> Any:
        return late_base.reduce(self, callback_base)

    def __init__(
        self,
        monitor: Optional[str] = None,
        mode: str = "min",
        every_n_epochs: Optional[int] = None,
        name: str = DEFAULT_SERIES,
        best_name: str = "best",
        filename: str = "lightning.ckpt",
        checkpoint: Any = None,
        *,
        every_n_train_steps: Optional[int] = None,
        train_time_interval: Optional[datetime.timedelta] = None,
    ):
        if mode not in _MODES:
            raise CheckpointConfigError(
                "CheckpointCallback(mode=%r): use 'min' or 'max'." % (mode,)
            )
        for option, value in (
            ("every_n_epochs", every_n_epochs),
            ("every_n_train_steps", every_n_train_steps),
        ):
            if value is not None and (not _whole(value) or value < 1):
                raise CheckpointConfigError(
                    "CheckpointCallback(%s=%r): use a whole number >= 1." % (option, value)
                )
        if train_time_interval is not None and (
            not isinstance(train_time_interval, datetime.timedelta)
            or train_time_interval <= datetime.timedelta(0)
        ):
            raise CheckpointConfigError(
                "CheckpointCallback(train_time_interval=%r): use a positive datetime.timedelta, "
                "e.g. timedelta(minutes=30)." % (train_time_interval,)
            )
        given = [
            option
            for option, value in (
                ("every_n_epochs", every_n_epochs),
                ("every_n_train_steps", every_n_train_steps),
                ("train_time_interval", train_time_interval),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise CheckpointConfigError(
                "CheckpointCallback(%s): these schedules are mutually exclusive (as in "
                "Lightning's ModelCheckpoint); give one." % ", ".join(given)
            )
        if not filename or os.path.basename(filename) != filename:
            raise CheckpointConfigError(
                "CheckpointCallback(filename=%r): use a plain file name." % (filename,)
            )
        self.monitor = monitor
        self.mode = mode
        # Like ModelCheckpoint: no epoch-end saves when a step or time schedule is given.
        self.every_n_epochs = every_n_epochs if given else 1
        self.every_n_train_steps = every_n_train_steps
        self.train_time_interval = train_time_interval
        self._last_time: Optional[float] = None
        self._mid_epoch = False  # a save from on_train_batch_end is in progress
        self._pending_rng: Any = None  # restored before the first batch of a resumed fit
        self.name = validate_name(name)
        self.best_name = validate_name(best_name)
        self.filename = filename
        self._checkpoint = checkpoint
        self.best_score: Optional[float] = None
        self.last_reference: Any = None
        self.best_reference: Any = None
        self._last_saved_step: Optional[int] = None
        self._step_at_batch_start: Optional[int] = None  # global_step before this batch

    # ------------------------------------------------------------------ where
    @property
    def checkpoint(self) -> Any:
        """The checkpoint object saved to (``current.checkpoint`` unless one was given)."""
        if self._checkpoint is None:
            from metaflow import current

            if not hasattr(current, "checkpoint"):
                raise CheckpointConfigError(
                    "CheckpointCallback saves through current.checkpoint: use it in a step "
                    "decorated with @checkpoint, or pass checkpoint=..."
                )
            return current.checkpoint
        return self._checkpoint

    @property
    def ckpt_path(self) -> Optional[str]:
        """The Lightning checkpoint to resume from on a ``@retry`` attempt or a ``resume``, for
        ``trainer.fit(..., ckpt_path=cb.ckpt_path)``: the newest ``latest=True`` checkpoint of
        series ``name`` (the one the task loaded if it is of that series, else loaded now);
        None if there is none."""
        if self._resume is False:
            directory = own_latest(self.checkpoint, self.name, self.filename)
            self._resume = None if directory is None else os.path.join(directory, self.filename)
        return self._resume

    # ------------------------------------------------------------------ Lightning state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, name=self.name)

    def state_dict(self) -> dict[str, Any]:
        # Stored inside the Lightning checkpoint; only plain values and tensors, so
        # torch.load(weights_only=True) reads it.
        return {"best_score": self.best_score, "rng": capture_rng(), "mid_epoch": self._mid_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        rng = state_dict.get("rng")
        if not rng:
            return
        if state_dict.get("mid_epoch"):
            # Saved after a batch: the resumed fit first makes a new train iterator (a
            # DataLoader draws its base seed from torch's generator), which the uninterrupted
            # run made at the start of the epoch; restore just before the next batch instead.
            self._pending_rng = rng
        else:
            # Lightning restores callbacks before the resumed epoch's iterator, so the
            # shuffles and dropout masks that follow are the uninterrupted run's.
            restore_rng(rng)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_time = time.monotonic()  # a resumed fit counts from its own start
        # The step the fit starts at is saved already (a resumed fit: the file it loaded) or
        # has nothing to save (a new fit, step 0: as ModelCheckpoint, no steps, no save).
        # Saving it again after the resumed fit's first micro-batch would store a state in
        # the middle of an accumulation window, which no resume continues exactly.
        self._last_saved_step = trainer.global_step
        resumed = trainer.global_step and trainer.is_global_zero  # rank 0 saves, and lists
        if resumed and self.monitor is not None and self.best_reference is None:
            # The best an earlier attempt saved (the loaded best_score is its value): so
            # cb.best_reference after fit() is the run's best even if nothing later beats it.
            self.best_reference = own_best(
                own_refs(self.checkpoint, self.best_name), trainer.global_step
            )

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng:
            restore_rng(rng)
        self._save_deferred(trainer)  # the validation it waited for did not run after all
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_at_batch_start:
            # No optimizer step in this batch (accumulate_grad_batches > 1: a micro-batch
            # inside the window; gradients not yet applied are in no checkpoint): a save here
            # could not be resumed exactly.  The time schedule waits for the window's end.
            return
        due = bool(self.every_n_train_steps) and trainer.global_step % self.every_n_train_steps == 0
        if self.train_time_interval is not None:
            now = time.monotonic()
            late = self._last_time is None or (
                now - self._last_time >= self.train_time_interval.total_seconds()
            )
            # Rank 0's clock decides for all: save_checkpoint is collective.
            late = bool(trainer.strategy.broadcast(late))
            if late:
                self._last_time = now
            due = due or late
        if due:
            mid_epoch = batch_idx + 1 < trainer.num_training_batches
            if self._validates_next(trainer) or not mid_epoch:
                # Lightning validates right after this hook, and a fit resumed from a save made
                # here skips that validation (whose loader draws from torch's RNG): save at its
                # end instead, as ModelCheckpoint does, so the RNG states are the ones the
                # uninterrupted run goes on with (and the monitored value is the fresh one).
                # After the epoch's last batch with no validation, save at the epoch's end (as
                # every_n_epochs): a fit resumed from this hook restarts "on train batch end"
                # and fast-forwards the next epoch's validation progress, which makes a val
                # loader iterator: one draw from torch's RNG the uninterrupted run never made.
                self._deferred = mid_epoch
            else:
                self._save_now(trainer, mid_epoch)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._save_deferred(trainer)

    @staticmethod
    def _validates_next(trainer: Any) -> bool:
        """Whether Lightning runs validation right after this training batch (its own test)."""
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        try:
            if getattr(loop, "_skip_next_val", False):
                return False
            return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
        except Exception:  # another Lightning version: save at once, as before
            return False

    def _save_deferred(self, trainer: Any) -> None:
        mid_epoch, self._deferred = self._deferred, None
        if mid_epoch is not None:
            self._save_now(trainer, mid_epoch)

    def _save_now(self, trainer: Any, mid_epoch: bool) -> None:
        # After an epoch's last batch, a resumed fit goes on like one saved at the epoch's
        # end (validation, then a new epoch): restore the RNG when loaded, as then.
        self._mid_epoch = mid_epoch
        try:
            self._save(trainer)
        finally:
            self._mid_epoch = False

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._save_deferred(trainer)
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._save_deferred(trainer)
        self._save(trainer)  # e.g. max_steps reached mid-epoch; a no-op if already saved

    # ------------------------------------------------------------------ saving
    def _skip(self, trainer: Any) -> bool:
        from_fn = getattr(getattr(trainer, "state", None), "fn", None)
        return (
            bool(trainer.fast_dev_run)
            or trainer.sanity_checking
            or str(getattr(from_fn, "value", from_fn)) != "fit"
            or self._last_saved_step == trainer.global_step
        )

    def _metric(self, trainer: Any) -> Optional[float]:
        if self.monitor is None:
            return None
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return None
        value = float(value.item() if hasattr(value, "item") else value)
        return value if math.isfinite(value) else None

    def _improves(self, value: Optional[float]) -> bool:
        if value is None:
            return False
        if self.best_score is None:
            return True
        return value < self.best_score if self.mode == "min" else value > self.best_score

    def _save(self, trainer: Any) -> None:
        if self._skip(trainer):
            return
        value = self._metric(trainer)
        improved = self._improves(value)
        if improved:
            self.best_score = value  # before writing, so the file records it
        checkpoint = self.checkpoint
        path = os.path.join(checkpoint.directory, self.filename)
        # Every rank calls save_checkpoint (collective for sharded strategies); rank 0 writes.
        trainer.save_checkpoint(path)
        self._last_saved_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        metadata: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        if self.monitor is not None and value is not None:
            metadata[self.monitor] = value
        self.last_reference = checkpoint.save(
            path=path, metadata=metadata, name=self.name, latest=True
        )
        if improved:
            self.best_reference = checkpoint.save(
                path=path, metadata=metadata, name=self.best_name, latest=False
            )
