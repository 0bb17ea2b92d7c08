"""Save and restore a PyTorch training state through ``current.checkpoint``.

``TrainingState`` holds references to the live objects of a training loop (models, optimizers,
LR schedulers, a ``GradScaler``, anything with ``state_dict()``/``load_state_dict()``), the
step and epoch counters, a small JSON ``extra`` dict and, unless disabled, the random number
generators of Python, NumPy and torch (CPU and CUDA).  ``Every`` (``schedule.py``) decides
when a loop saves.

Files a state writes into a directory::

    <name>.safetensors   each torch.nn.Module (safetensors: raw tensors, nothing executable)
    <name>.pt            every other object's state_dict (torch.save)
    rng.pt               RNG states (torch.save of tensors, tuples and numbers)
    state.json           counters, extra and the list of the files above; written last

Loading never unpickles arbitrary objects: ``.pt`` files are read with
``torch.load(weights_only=True)`` and ``write()`` reads each one back the same way, so a state
that could not be restored fails at save time, not on the retry that needs it.

torch, safetensors and numpy are imported inside functions only (``import metaflow`` imports
this module); a missing torch or safetensors fails ``TrainingState(...)`` naming the extra.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any, Optional

from ..core.scope import DEFAULT_NAME
from .schedule import Every
from .torch_util import (
    TrainingStateError,
    is_module,
    require_torch_stack,
    restore_rng,
    safe_load,
    unwrap,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..common.reference import CheckpointReference
    from ..task.background import SaveHandle

# File names are built from object names: keep them plain and distinct from our own files.
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$")
_RESERVED = {"rng", "state"}

__all__ = ["Every", "TrainingState", "TrainingStateError"]


# ------------------------------------------------------------------------------------- state
class TrainingState:
    """The state of a training loop, saved and restored as one checkpoint.  Creating one without
    torch or safetensors raises ``CheckpointDependencyError`` (not at the first save).

    Holds references to the live objects; ``write``/``save`` read their current state and
    ``read``/``restore`` load a saved state back into them in place.

    Parameters
    ----------
    model : torch.nn.Module, optional
        Saved as ``model.safetensors``.  DDP, DataParallel and ``torch.compile`` wrappers are
        unwrapped, so the file loads into the bare module too.
    optimizer : torch.optim.Optimizer, optional
        Saved as ``optimizer.pt`` (momentum buffers, Adam moments, step counts, param groups).
    scheduler : LR scheduler, optional
        Saved as ``scheduler.pt``.
    scaler : torch.amp.GradScaler, optional
        Saved as ``scaler.pt``.
    step, epoch : int
        Counters restored by ``read()``; update ``state.step`` / ``state.epoch`` as you train.
    extra : dict, optional
        Small JSON-serialisable values restored with the counters (a loss history, a best
        metric, the position in a data stream).
    rng : bool
        Save and restore the RNG states of Python ``random``, NumPy's global generator (if
        installed) and torch (CPU, and CUDA when initialised).  Default True: a resumed run
        then draws the same dropout masks, augmentations and shuffles as an uninterrupted one.
    weights_only : bool
        Default True: ``.pt`` files are read with ``torch.load(weights_only=True)``, which only
        rebuilds tensors, containers, numbers and strings (plus classes you registered with
        ``torch.serialization.add_safe_globals``), and ``write()`` checks that they can be.
        False unpickles arbitrary Python objects, which runs code stored in the file: use it
        only for checkpoints you wrote yourself, never for ones you downloaded.
    **objects
        More objects to save under their keyword names (letters, digits, ``_``, ``-``), e.g.
        ``discriminator=disc, opt_d=opt_d, ema=ema_model``.  Modules are saved with
        safetensors, anything else with a ``state_dict()`` / ``load_state_dict()`` as ``.pt``.

    Examples
    --------
    >>> state = TrainingState(model=model, optimizer=optimizer, scheduler=scheduler)
    >>> state.restore(current.checkpoint)          # False on a first attempt
    >>> every = Every(steps=100, seconds=600)
    >>> while state.step < total_steps:
    ...     train_one_batch()
    ...     state.step += 1
    ...     if every.due(state.step, final=state.step == total_steps):
    ...         state.save(current.checkpoint, metadata={"loss": loss.item()})
    """

    def __init__(
        self,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        *,
        step: int = 0,
        epoch: int = 0,
        extra: Optional[dict] = None,
        rng: bool = True,
        weights_only: bool = True,
        **objects: Any,
    ):
        require_torch_stack("TrainingState")
        named = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        named.update(objects)
        self._objects: dict[str, Any] = {}
        for name, obj in named.items():
            if obj is None:
                continue
            if not isinstance(name, str) or not _OBJECT_NAME.match(name) or name in _RESERVED:
                raise TrainingStateError(
                    "Cannot track an object named %r: names become file names, so use letters, "
                    "digits, '_' and '-' (at most 100), and not %s."
                    % (name, " or ".join(repr(r) for r in sorted(_RESERVED)))
                )
            if not (
                callable(getattr(obj, "state_dict", None))
                and callable(getattr(obj, "load_state_dict", None))
            ):
                raise TrainingStateError(
                    "Cannot track %s=%r: it needs state_dict() and load_state_dict() methods "
                    "(a module, optimizer, LR scheduler, GradScaler, ...). Put plain values in "
                    "extra={...}." % (name, type(obj).__name__)
                )
            self._objects[name] = obj
        self.step = step
        self.epoch = epoch
        self.extra: dict = dict(extra or {})
        self.rng = bool(rng)
        self.weights_only = bool(weights_only)

    # ------------------------------------------------------------------ access
    @property
    def objects(self) -> dict[str, Any]:
        """The tracked objects by name (a copy; pass new ones to the constructor)."""
        return dict(self._objects)

    def __getattr__(self, name: str) -> Any:
        # state.model, state.optimizer, state.discriminator, ... for the tracked objects.
        objects = self.__dict__.get("_objects", {})
        if name in objects:
            return objects[name]
        raise AttributeError("%r object has no attribute %r" % (type(self).__name__, name))

    def __repr__(self) -> str:
        return "TrainingState(%s, step=%d, epoch=%d, rng=%s)" % (
            ", ".join("%s=%s" % (k, type(v).__name__) for k, v in self._objects.items()),
            self.step,
            self.epoch,
            self.rng,
        )

    # ------------------------------------------------------------------ write / read
    def write(self, directory: str) -> dict:
        """Write the state's files into ``directory`` (created if needed).

        Each file is written to a temporary name and renamed into place; ``state.json`` comes
        last, so a directory never describes files that are not complete.  Other files in the
        directory are left alone.

        Parameters
        ----------
        directory : str
            Target directory, typically ``current.checkpoint.directory``.

        Returns
        -------
        dict
            The contents of ``state.json``.

        Raises
        ------
        TrainingStateError
            If a counter is not an integer, ``extra`` is not JSON-serialisable, or a state
            could not be read back with ``torch.load(weights_only=True)``.
        """
        from .state_files import live_parts, write_files  # not at import: ``import metaflow``

        parts = live_parts(self._objects, self.step, self.epoch, self.extra, self.rng)
        return write_files(parts, os.fspath(directory), self.weights_only)

    def read(self, directory: str, *, strict: bool = True) -> bool:
        """Restore the state saved in ``directory`` into the tracked objects, in place.

        Sets ``step``, ``epoch`` and ``extra``, loads every object, then the RNG states (last,
        so nothing drawn while loading shifts them).

        Parameters
        ----------
        directory : str
            A directory written by :meth:`write`, e.g. ``current.checkpoint.directory`` or the
            path returned by ``current.checkpoint.load(...)`` or ``Checkpoint().load(...)``.
        strict : bool
            Default True: the saved objects and the tracked ones must have the same names, so a
            resumed run never mixes fresh and restored objects unnoticed.  False restores the
            tracked objects the directory has and ignores the rest (e.g. only the model, for
            evaluation).  Module keys are always matched strictly.

        Returns
        -------
        bool
            True if a state was restored, False if ``directory`` holds no ``state.json``.

        Raises
        ------
        TrainingStateError
            If ``state.json`` is unreadable or of a newer format, the objects do not match
            (``strict``), or a ``.pt`` file holds objects that may not be unpickled.
        """
        from .state_files import FORMAT, FORMAT_VERSION, RNG_FILE, STATE_FILE

        directory = os.fspath(directory)
        state_path = os.path.join(directory, STATE_FILE)
        if not os.path.isfile(state_path):
            return False
        try:
            with open(state_path, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("format") != FORMAT:
                raise ValueError("not a training state (format %r)" % (doc.get("format"),))
            if int(doc.get("version", 0)) > FORMAT_VERSION:
                raise ValueError(
                    "format version %s is newer than this package reads (%d): upgrade "
                    "metaflow-checkpointing" % (doc.get("version"), FORMAT_VERSION)
                )
            saved: dict = doc["objects"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrainingStateError("Cannot read %s: %s." % (state_path, exc)) from exc
        missing = [n for n in self._objects if n not in saved]
        unexpected = [n for n in saved if n not in self._objects]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("not saved there: %s" % ", ".join(missing))
            if unexpected:
                parts.append("saved there but not tracked: %s" % ", ".join(unexpected))
            raise TrainingStateError(
                "The training state in %s does not match this TrainingState (%s). Track the same "
                "objects as the code that saved it, or pass strict=False to restore only the "
                "ones both have." % (directory, "; ".join(parts))
            )
        for name, obj in self._objects.items():
            if name not in saved:
                continue
            entry = saved[name]
            path = os.path.join(directory, os.path.basename(entry["file"]))
            if not os.path.isfile(path):
                raise TrainingStateError(
                    "%s lists %s for %s, but the file is missing." % (state_path, path, name)
                )
            if entry.get("kind") == "module":
                if not is_module(obj):
                    raise TrainingStateError(
                        "%s was saved as a torch.nn.Module but is now a %s."
                        % (name, type(obj).__name__)
                    )
                from safetensors.torch import load_model

                load_model(unwrap(obj), path, strict=True)
            else:
                obj.load_state_dict(safe_load(path, name, self.weights_only))
        rng = doc.get("rng")
        if self.rng and rng:
            # Our own file: only tensors, tuples and numbers, never anything else.
            restore_rng(safe_load(os.path.join(directory, RNG_FILE), "the RNG states"))
        self.step = int(doc.get("step", 0))
        self.epoch = int(doc.get("epoch", 0))
        self.extra = dict(doc.get("extra") or {})
        return True

    # ------------------------------------------------------------------ through a checkpoint
    def save(
        self,
        checkpoint: Any,
        metadata: Optional[dict] = None,
        name: str = DEFAULT_NAME,
        latest: bool = True,
        **save_options: Any,
    ) -> CheckpointReference | SaveHandle:
        """Write the state into ``checkpoint.directory`` and save that directory.

        With ``blocking=False`` and ``current.checkpoint``, the call blocks only to copy the
        state to host memory (every tensor, CUDA ones into pinned memory; the rest deep-copied;
        the RNG states), as ``torch.distributed.checkpoint.async_save`` does; the task's
        background save thread then writes the files from that copy into the save's own
        snapshot (``checkpoint.directory`` itself is not written; its other files are saved
        with the state, as a blocking save does) and commits it.  At most two copies are held
        at once (one being written, one waiting): a third save waits for the older one.

        Parameters
        ----------
        checkpoint : current.checkpoint
            The task's checkpoint object (or anything with ``directory`` and
            ``save(path, metadata, name, latest)``, such as ``Checkpoint(init_dir=True)`` in
            a subprocess: there ``blocking=False`` writes the files first).
        metadata : dict, optional
            Checkpoint metadata (e.g. ``{"loss": 0.31}``).  ``step`` and ``epoch`` are added
            unless given, so retention rules (``keep_every_steps``) and listings see them.
        name : str
            Checkpoint series name (default ``"mfchckpt"``).
        latest : bool
            Whether a retry or resume may load this checkpoint automatically (default True).
        **save_options
            Passed on to ``checkpoint.save`` as they are (``blocking=False``: see above; it takes
            the copy-to-memory path with any other option too, except a ``path=`` other than
            ``checkpoint.directory``: the files are then written first, then that path saved).

        Returns
        -------
        CheckpointReference or SaveHandle
            The committed checkpoint (what ``checkpoint.save`` returns); with
            ``blocking=False``, the background save's handle (``wait()`` returns it; an error
            while writing or saving fails it, and the task at its end).
        """
        meta = {"step": self.step, "epoch": self.epoch}
        meta.update(metadata or {})
        options = dict(save_options)
        path = options.pop("path", None)
        if options.pop("blocking", True) is False and (
            # Another path than the directory: the state's files go where a blocking save
            # writes them, inside that path or not (write first, then save it).
            path is None or _same_path(path, checkpoint.directory)
        ):
            from .staged_state import save_in_background

            # Every other option goes on to the save (checked there as checkpoint.save does).
            handle = save_in_background(self, checkpoint, meta, name, latest, **options)
            if handle is not None:
                return handle
        self.write(checkpoint.directory)
        return checkpoint.save(metadata=meta, name=name, latest=latest, **save_options)

    def restore(self, checkpoint: Any, *, strict: bool = True) -> bool:
        """Restore the state from the checkpoint loaded when the task started.

        Parameters
        ----------
        checkpoint : current.checkpoint
            The task's checkpoint object.  Nothing happens unless ``checkpoint.is_loaded``
            (a first attempt, or ``load_policy="none"``: then call
            ``state.read(current.checkpoint.load(ref))``).
        strict : bool
            See :meth:`read`.

        Returns
        -------
        bool
            True if the state was restored, False if there was none to restore.
        """
        if not getattr(checkpoint, "is_loaded", False):
            return False
        return self.read(checkpoint.directory, strict=strict)


def _same_path(a: Any, b: Any) -> bool:
    """Whether two paths name the same place (``checkpoint.directory`` spelt another way)."""
    return os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))
