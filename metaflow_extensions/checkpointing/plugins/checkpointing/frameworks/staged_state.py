"""``TrainingState.save(..., blocking=False)``: block only to copy the state to host memory.

As ``torch.distributed.checkpoint.async_save`` does, the call copies every tensor the state's
files would hold to host memory (pinned memory for CUDA tensors when CUDA is available; CPU
tensors are copied too, since training goes on to change them in place), deep-copies the
rest (counters, ``extra``, the non-tensor parts of each ``state_dict()``) and captures the RNG
states, then returns.  The task's background save thread then writes those files from the
copy into the save's own snapshot directory (never ``checkpoint.directory``) and commits it,
in order with the task's other background saves (``task/saves.py``): the handle, the wait at
the end of the task, the errors and what a signal does are those of
``current.checkpoint.save(blocking=False)``.

Memory: at most :data:`MAX_STAGED` host copies exist in the process at once, the one being
written and one waiting; a further save blocks until the older one is written (its copy is
released as soon as its files are, before the upload).  The tensors of the last copy written
are kept for the next copy to reuse (fresh memory is slow to fault in, pinned memory slow to
allocate), counted among those two: between saves a process holds one copy of its state.
"""

from __future__ import annotations

import copy
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from .state_files import (
    RNG_FILE,
    STATE_FILE,
    Entry,
    Parts,
    checked_counters_and_extra,
    type_name,
    write_files,
)
from .torch_util import capture_rng, import_torch, is_module, unwrap

if TYPE_CHECKING:  # pragma: no cover
    from ..task.background import SaveHandle
    from .pytorch import TrainingState

#: Host copies alive at once in a process: one being written, one waiting to be.
MAX_STAGED = 2
_TICK = 0.05  # seconds between two looks at the copies still held

_cond = threading.Condition()
_staged: list[StagedWrite] = []  # saves submitted whose copies may still be held
_reserved = 0  # saves copying their state now
_pool: list[Any] = []  # the tensors of the last copy written, reused by the next copy


class StagedWrite:
    """A state copied to host memory, written into a snapshot by the background save thread
    (``task.saves.Prepare``).  The snapshot is of ``checkpoint.directory`` but for the files
    this write replaces (:attr:`replaces`): the directory's other files are copied once, by
    the save's own snapshot, with ``save()``'s rules for links, as a blocking save reads them.

    Parameters
    ----------
    parts : Parts
        The copy: what :func:`state_files.write_files` writes.
    buffers : list of torch.Tensor
        The host tensors holding the copy, pooled for the next copy once written.
    nbytes : int
        Bytes of those tensors (counted in the task's background-save budget).
    weights_only : bool
        Check that each ``.pt`` file loads with ``torch.load(weights_only=True)``.
    what : str
        The save in messages ("the training state (step N)").
    """

    def __init__(
        self,
        parts: Parts,
        buffers: list[Any],
        nbytes: int,
        weights_only: bool,
        what: str,
    ) -> None:
        self.parts: Optional[Parts] = parts
        self.buffers: Optional[list[Any]] = buffers
        self.nbytes = nbytes
        self.what = what
        self.weights_only = weights_only
        self.handle: Optional[SaveHandle] = None  # the save's handle, once submitted
        # Names at the snapshot's top that write() writes: not copied from the directory.
        self.replaces = own_files(list(parts.entries))

    def holds_memory(self) -> bool:
        """Whether the copy still counts toward :data:`MAX_STAGED`.

        True until its files are written; False once they are, or once its save ended
        without writing them (failed, or abandoned at a signal: the worker then drops the
        save, and with it the copy, without calling :meth:`write`).
        """
        return self.parts is not None and not (self.handle is not None and self.handle.done())

    def write(self, directory: str, abandoned: Callable[[], bool]) -> None:
        """Write the state's files from the copy into the snapshot's ``directory`` (the
        background save thread's call, before the commit), then release the copy.

        Parameters
        ----------
        directory : str
            The save's snapshot directory: the files land at its top, beside the copied
            other files of ``checkpoint.directory``.
        abandoned : callable
            Asked between files (and while ``torch.save`` pickles): True once a signal
            abandoned the save, which then stops with an error.

        Raises
        ------
        TrainingStateError
            If a ``.pt`` file does not load with ``weights_only=True`` (when asked).
        RuntimeError
            If the copy was already written (each is written once).
        """
        global _pool
        parts, buffers = self.parts, self.buffers
        if parts is None or buffers is None:  # pragma: no cover - written once
            raise RuntimeError("%s was already written." % self.what)
        written = False
        try:
            write_files(parts, directory, self.weights_only, abandoned)
            written = True
        finally:
            # The files hold it now (or the save failed): the copy goes before the upload.
            self.parts = self.buffers = None
            del parts
            with _cond:
                if written:  # its buffers take the next copy (fresh memory is slow to fault in)
                    _pool = buffers
                _cond.notify_all()


def save_in_background(
    state: TrainingState,
    checkpoint: Any,
    metadata: dict,
    name: str,
    latest: bool,
    **options: Any,
) -> Optional[SaveHandle]:
    """``state.save(checkpoint, ..., blocking=False, **options)`` as described above; None
    (nothing done) if ``checkpoint`` is not a task's ``current.checkpoint`` (or safetensors
    lacks what the copy needs): the caller then writes first, as a blocking save does.
    ``options``: the other options of ``current.checkpoint.save`` (``storage_format``,
    ``sharded``), checked as it checks them."""
    from ..task.runtime import CheckpointRuntime, save_prepared

    if not isinstance(checkpoint, CheckpointRuntime):
        return None
    try:  # what save_model drops of tensors sharing memory (see _module_tensors)
        from safetensors.torch import _remove_duplicate_names  # noqa: F401
    except ImportError:  # pragma: no cover - a safetensors without it: write first, as before
        return None
    global _reserved, _pool
    objects = state.objects
    with _cond:
        while True:
            _staged[:] = [s for s in _staged if s.holds_memory()]
            if len(_staged) + _reserved < MAX_STAGED:
                _reserved += 1
                pool, _pool = _pool, []  # copies held + this one + the pool stay <= MAX_STAGED
                break
            _cond.wait(_TICK)  # a failed or abandoned save frees its copy without notifying
    try:
        parts, buffers, nbytes = stage(
            objects, state.step, state.epoch, state.extra, state.rng, pool
        )
        del pool  # what it did not reuse
        what = "the training state (step %d)" % parts.step
        staged = StagedWrite(parts, buffers, nbytes, state.weights_only, what)
        del parts, buffers
        directory = os.fspath(checkpoint.directory)
        os.makedirs(directory, exist_ok=True)  # as write() makes it: the snapshot's source
        staged.handle = save_prepared(
            checkpoint, directory, staged, metadata, name, latest, **options
        )
        with _cond:
            _staged.append(staged)
    finally:
        with _cond:
            _reserved -= 1
            _cond.notify_all()
    return staged.handle


def stage(
    objects: dict[str, Any],
    step: Any,
    epoch: Any,
    extra: Any,
    rng: bool,
    pool: Optional[list[Any]] = None,
) -> tuple[Parts, list[Any], int]:
    """A copy of everything a write reads, in host memory: the parts, the tensors holding it
    (to be reused once written) and their bytes.  ``pool``: tensors of an earlier copy to
    copy into where shape and dtype match."""
    torch = import_torch()
    parts = Parts(step, epoch, checked_counters_and_extra(step, epoch, extra))
    copier = _Copier(torch, pool or [])
    for name, obj in objects.items():
        if is_module(obj):
            tensors, metadata = _module_tensors(unwrap(obj))
            parts.entries[name] = Entry(
                "module",
                type_name(obj),
                tensors={k: copier(t) for k, t in tensors.items()},
                metadata=metadata,
            )
        else:
            parts.entries[name] = Entry(
                "state_dict", type_name(obj), state=copier.deep(obj.state_dict())
            )
    parts.rng = capture_rng() if rng else None  # at the call, as a blocking write does
    copier.finish()
    return parts, copier.buffers, copier.nbytes


def _module_tensors(module: Any) -> tuple[dict, Optional[dict]]:
    """The tensors ``safetensors.torch.save_model`` writes for ``module`` and the metadata it
    adds (one name kept of tensors sharing memory, the others recorded in the metadata): the
    sharing is only visible in the live tensors, before they are copied."""
    from safetensors.torch import _remove_duplicate_names

    state_dict = module.state_dict()
    metadata: Optional[dict] = None
    for kept, removed in _remove_duplicate_names(state_dict).items():
        for name in removed:
            metadata = metadata if metadata is not None else {}
            metadata.setdefault(name, kept)
            del state_dict[name]
    return state_dict, metadata


class _Copier:
    """Copies tensors to host memory: CUDA ones into pinned memory when it can be had
    (asynchronously, one synchronisation at the end), every other one with a plain copy."""

    def __init__(self, torch: Any, pool: list):
        self.torch = torch
        self.pin = torch.cuda.is_available()  # pinned memory needs a CUDA driver
        self.cuda = False
        self.nbytes = 0
        self.buffers: list = []  # every host tensor of the copy
        self.pool: dict = {}
        for buffer in pool:
            self.pool.setdefault(_fits(buffer), []).append(buffer)

    def __call__(self, tensor: Any) -> Any:
        torch = self.torch
        t = tensor.detach()
        self.nbytes += t.numel() * t.element_size()
        cuda = t.device.type == "cuda"
        reuse = self.pool.get((tuple(t.shape), t.dtype, cuda and self.pin))
        out = reuse.pop() if reuse else None
        if out is None and cuda and self.pin:
            try:
                out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            except RuntimeError:  # no pinned memory to be had: pageable, still correct
                self.pin = False
        if out is None:
            out = torch.empty(t.shape, dtype=t.dtype)  # contiguous, as save_model writes it
        # From an accelerator: asynchronous into pinned memory (one synchronisation at the
        # end), else a plain copy.  CPU tensors are copied too: training changes them in place.
        out.copy_(t, non_blocking=cuda and out.is_pinned())
        self.cuda = self.cuda or cuda
        self.buffers.append(out)
        return out

    def deep(self, state: Any) -> Any:
        """A deep copy of a ``state_dict()`` whose tensors are host copies."""
        memo: dict = {}
        self._collect(state, memo)
        return copy.deepcopy(state, memo)

    def _collect(self, value: Any, memo: dict) -> None:
        # Tensors inside other objects are copied by deepcopy (on their device).
        if isinstance(value, self.torch.Tensor):
            if id(value) not in memo:
                memo[id(value)] = self(value)
        elif isinstance(value, dict):
            for v in value.values():
                self._collect(v, memo)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._collect(v, memo)

    def finish(self) -> None:
        if self.cuda:  # the non-blocking copies must be complete before training goes on
            self.torch.cuda.synchronize()


def _fits(buffer: Any) -> tuple:
    """What a pooled buffer can take: a tensor of this shape and dtype, from CUDA if pinned."""
    return (tuple(buffer.shape), buffer.dtype, bool(buffer.is_pinned()))


def own_files(names: list[str]) -> frozenset[str]:
    """The names a write of these objects replaces in a directory."""
    own = {STATE_FILE, RNG_FILE}
    for name in names:
        own.update((name + ".safetensors", name + ".pt"))
    return frozenset(own)
