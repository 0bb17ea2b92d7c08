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
dropped as soon as its files are, before the upload).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
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

#: Host copies alive at once in a process: one being written, one waiting to be.
MAX_STAGED = 2
_TICK = 0.05  # seconds between two looks at the copies still held

_cond = threading.Condition()
_staged: list[StagedWrite] = []  # saves submitted whose copies may still be held
_reserved = 0  # saves copying their state now


class StagedWrite:
    """A state copied to host memory, written into a snapshot by the background save thread
    (``task.saves.Prepare``)."""

    def __init__(self, parts: Parts, nbytes: int, weights_only: bool, what: str):
        self.parts: Optional[Parts] = parts
        self.nbytes = nbytes
        self.what = what
        self.weights_only = weights_only
        self.handle: Any = None  # the save's handle, once submitted

    def holds_memory(self) -> bool:
        return self.parts is not None and not (self.handle is not None and self.handle.done())

    def write(self, directory: str, abandoned: Callable[[], bool]) -> None:
        parts = self.parts
        if parts is None:  # pragma: no cover - written once
            raise RuntimeError("%s was already written." % self.what)
        try:
            write_files(parts, directory, self.weights_only, abandoned)
        finally:
            # The files hold it now (or the save failed): the copy goes before the upload.
            self.parts = None
            with _cond:
                _cond.notify_all()


def save_in_background(
    state: Any, checkpoint: Any, metadata: dict, name: str, latest: bool
) -> Optional[SaveHandle]:
    """``state.save(checkpoint, ..., blocking=False)`` as described above; None (nothing done)
    if ``checkpoint`` is not a task's ``current.checkpoint``."""
    from ..task.runtime import CheckpointRuntime, save_prepared

    if not isinstance(checkpoint, CheckpointRuntime):
        return None
    global _reserved
    objects = state.objects
    with _cond:
        while True:
            _staged[:] = [s for s in _staged if s.holds_memory()]
            if len(_staged) + _reserved < MAX_STAGED:
                _reserved += 1
                break
            _cond.wait(_TICK)  # a failed or abandoned save frees its copy without notifying
    try:
        parts, nbytes = stage(objects, state.step, state.epoch, state.extra, state.rng)
        what = "the training state (step %d)" % parts.step
        staged = StagedWrite(parts, nbytes, state.weights_only, what)
        tmp = snapshot_others(checkpoint.directory, own_files(list(objects)))
        try:
            root = os.path.join(tmp, os.listdir(tmp)[0])
            staged.handle = save_prepared(checkpoint, root, staged, metadata, name, latest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the save took its own snapshot of it
        with _cond:
            _staged.append(staged)
    finally:
        with _cond:
            _reserved -= 1
            _cond.notify_all()
    return staged.handle


def stage(objects: dict, step: Any, epoch: Any, extra: Any, rng: bool) -> tuple[Parts, int]:
    """A copy of everything a write reads, in host memory; and the bytes of its tensors."""
    torch = import_torch()
    parts = Parts(step, epoch, checked_counters_and_extra(step, epoch, extra))
    copier = _Copier(torch)
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
    return parts, copier.nbytes


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

    def __init__(self, torch: Any):
        self.torch = torch
        self.pin = torch.cuda.is_available()  # pinned memory needs a CUDA driver
        self.cuda = False
        self.nbytes = 0

    def __call__(self, tensor: Any) -> Any:
        torch = self.torch
        t = tensor.detach()
        self.nbytes += t.numel() * t.element_size()
        if t.device.type == "cuda":
            out = None
            if self.pin:
                try:
                    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                except RuntimeError:  # no pinned memory to be had: pageable, still correct
                    self.pin = False
            if out is None:
                out = torch.empty(t.shape, dtype=t.dtype)
            out.copy_(t, non_blocking=True)
            self.cuda = True
            return out
        if t.device.type == "cpu":
            # Contiguous, as save_model(force_contiguous=True) writes it.
            return t.clone(memory_format=torch.contiguous_format)
        return t.to("cpu", copy=True)  # another accelerator: a blocking copy

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


def snapshot_others(directory: str, own: set) -> str:
    """A new temporary directory beside ``directory`` holding a copy of its files other than
    the state's own (``own``: names at its top): a blocking save saves them with the state.
    Returns the path to save (``<tmp>/<basename>``); the caller removes ``<tmp>``."""
    parent = os.path.dirname(os.path.abspath(directory))
    tmp = tempfile.mkdtemp(prefix=".mfckpt-staged-", dir=parent if os.path.isdir(parent) else None)
    root = os.path.join(tmp, os.path.basename(os.path.abspath(directory)) or "checkpoint")
    os.makedirs(root)
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if entry.name in own:
                continue
            target = os.path.join(root, entry.name)
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, target, symlinks=True)
            else:
                shutil.copy(entry.path, target, follow_symlinks=False)
    return tmp


def own_files(names: list) -> set:
    """The names a write of these objects replaces in a directory."""
    own = {STATE_FILE, RNG_FILE}
    for name in names:
        own.update((name + ".safetensors", name + ".pt"))
    return own
