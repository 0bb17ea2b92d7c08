"""A PyTorch Lightning callback that checkpoints through ``current.checkpoint``.

``from metaflow import CheckpointCallback`` (this module never imports Lightning itself, so
``import metaflow`` stays light).  Lightning is imported when a callback is created: without
it, ``CheckpointCallback(...)`` raises ``CheckpointDependencyError`` naming the extra to install
(``pip install "metaflow-checkpointing[lightning]"``), before any training starts.

It works with ``lightning`` (``lightning.pytorch``) or ``pytorch_lightning``, whichever is
installed (``lightning.pytorch`` first): pass it to the Trainer of the same package.  How: the
class users see holds all the logic; creating one makes an instance of a subclass that also
derives from that package's ``Callback`` (built once per class, user subclasses included), so
``isinstance(cb, CheckpointCallback)`` and ``isinstance(cb, pl.Callback)`` both hold.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

from ..core.scope import DEFAULT_NAME, validate_name
from ..errors import CheckpointConfigError, CheckpointDependencyError
from .torch_util import capture_rng, import_torch, restore_rng

__all__ = ["CheckpointCallback"]

_MODES = ("min", "max")
#: Public class -> its subclass that also derives from Lightning's ``Callback``.
_WITH_LIGHTNING: dict[type, type] = {}


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


def _with_lightning(cls: type) -> type:
    """``cls`` itself if it already derives from Lightning's Callback, else its subclass that
    does (same name, so Lightning's state key and messages read ``CheckpointCallback``)."""
    pl = lightning_package()
    if issubclass(cls, pl.Callback):
        return cls
    if cls not in _WITH_LIGHTNING:
        _WITH_LIGHTNING[cls] = type(
            cls.__name__,
            (cls, pl.Callback),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_public": cls},
        )
    return _WITH_LIGHTNING[cls]


def _rebuild(public: type, state: dict) -> Any:
    """Unpickle a callback (module-level so pickle finds it): its class is rebuilt, not looked
    up, since the Lightning subclass is made at run time."""
    obj = object.__new__(_with_lightning(public))
    obj.__dict__.update(state)
    return obj


class CheckpointCallback:
    """Save Lightning's full training state as checkpoints: the last one (resumed by
    ``@retry`` and ``resume``) and the best one by a monitored metric.

    At the end of every ``every_n_epochs``-th training epoch (after validation) it writes
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
    every_n_epochs : int
        Save at the end of every this many epochs (default 1), and at the end of training.
    name : str
        Series of the last checkpoints (default ``"mfchckpt"``, as ``current.checkpoint``).
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

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Lightning is imported here, when a callback is made, never by ``import metaflow``.
        return object.__new__(_with_lightning(cls))

    def __reduce__(self) -> Any:
        return (_rebuild, (getattr(type(self), "_public", type(self)), dict(self.__dict__)))

    def __init__(
        self,
        monitor: Optional[str] = None,
        mode: str = "min",
        every_n_epochs: int = 1,
        name: str = DEFAULT_NAME,
        best_name: str = "best",
        filename: str = "lightning.ckpt",
        checkpoint: Any = None,
    ):
        if mode not in _MODES:
            raise CheckpointConfigError(
                "CheckpointCallback(mode=%r): use 'min' or 'max'." % (mode,)
            )
        if (
            isinstance(every_n_epochs, bool)
            or not isinstance(every_n_epochs, int)
            or (every_n_epochs < 1)
        ):
            raise CheckpointConfigError(
                "CheckpointCallback(every_n_epochs=%r): use a whole number >= 1."
                % (every_n_epochs,)
            )
        if not filename or os.path.basename(filename) != filename:
            raise CheckpointConfigError(
                "CheckpointCallback(filename=%r): use a plain file name." % (filename,)
            )
        self.monitor = monitor
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.name = validate_name(name)
        self.best_name = validate_name(best_name)
        self.filename = filename
        self._checkpoint = checkpoint
        self.best_score: Optional[float] = None
        self.last_reference: Any = None
        self.best_reference: Any = None
        self._last_saved_step: Optional[int] = None

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
        """The Lightning checkpoint loaded when the task started (a ``@retry`` attempt or a
        ``resume``), for ``trainer.fit(..., ckpt_path=cb.ckpt_path)``; None if there is none."""
        checkpoint = self.checkpoint
        if not getattr(checkpoint, "is_loaded", False):
            return None
        path = os.path.join(checkpoint.directory, self.filename)
        return path if os.path.isfile(path) else None

    # ------------------------------------------------------------------ Lightning state
    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, name=self.name)

    def state_dict(self) -> dict[str, Any]:
        # Stored inside the Lightning checkpoint; only plain values and tensors, so
        # torch.load(weights_only=True) reads it.
        return {"best_score": self.best_score, "rng": capture_rng()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        # Lightning restores callbacks before the first batch of the resumed epoch, so the
        # shuffles and dropout masks that follow are the uninterrupted run's.
        if state_dict.get("rng"):
            restore_rng(state_dict["rng"])

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
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
