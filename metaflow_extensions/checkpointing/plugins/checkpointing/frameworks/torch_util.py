"""What the PyTorch helpers share: the error type, lazy torch, safe file I/O and RNG states.

torch and numpy are imported inside functions only (``import metaflow`` imports the framework
modules through the top-level names and must stay light).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
from typing import Any, Callable

from ..errors import CheckpointDependencyError, CheckpointException, CheckpointWarning


class TrainingStateError(CheckpointException):
    """A training state that cannot be written, or a directory whose state cannot be restored."""

    headline = "Cannot save or restore the training state"


# ------------------------------------------------------------------------------------- helpers
def import_torch(feature: str = "TrainingState") -> Any:
    """torch, or a :class:`CheckpointDependencyError` naming ``feature`` and the extra."""
    try:
        import torch
    except ImportError as exc:
        raise CheckpointDependencyError.of(feature, "torch", "torch", exc) from exc
    return torch


def require_torch_stack(feature: str) -> None:
    """Import torch and safetensors now, so a missing (or broken) one fails where ``feature`` is
    created, naming the extra to install, and never at the first save mid-training.  NumPy
    stays optional: without it, its RNG state is simply not captured."""
    import_torch(feature)
    try:
        import safetensors.torch  # noqa: F401
    except ImportError as exc:
        raise CheckpointDependencyError.of(feature, "safetensors", "torch", exc) from exc


def is_module(obj: Any) -> bool:
    torch = import_torch()
    return isinstance(obj, torch.nn.Module)


def unwrap(module: Any) -> Any:
    """The module whose state_dict has plain keys: DDP/DataParallel's ``.module``, a compiled
    module's ``_orig_mod``.  Checkpoints then load into wrapped and unwrapped models alike."""
    torch = import_torch()
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
            module = module._orig_mod
        else:
            return module


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """Write ``path`` through a temporary file renamed into place, so an interrupted write
    never leaves a torn file that a later ``checkpoint.save()`` would upload."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % base, suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_load(path: str, what: str, weights_only: bool = True) -> Any:
    """``torch.load`` a state file on CPU; with ``weights_only`` (the default) nothing but
    tensors, containers, numbers and strings is ever unpickled."""
    torch = import_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise TrainingStateError(
            "Refusing to load %s (%s): it holds objects that torch.load(weights_only=True) does "
            "not allow, and nothing in it was executed. Detail: %s. If you wrote this file "
            "yourself, register its classes with torch.serialization.add_safe_globals([...]), or "
            "pass weights_only=False to TrainingState to unpickle it (runs arbitrary code: only "
            "for files you trust)." % (what, path, refusal(exc))
        ) from exc


def refusal(exc: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line: the first of its message
    (the lines after it are advice naming torch's own APIs, which our messages replace)."""
    first = str(exc).strip().splitlines()
    return first[0] if first else exc.__class__.__name__


# ------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict:
    """RNG states of Python ``random``, NumPy's global generator (if NumPy is importable),
    torch's CPU generator and, if CUDA is available and initialised, every CUDA device's.

    The result holds only tensors, tuples, ints, floats and strings, so it round-trips through
    ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    torch = import_torch()
    version, internal, gauss = random.getstate()
    states: dict = {"python": (version, tuple(internal), gauss)}
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        states["numpy"] = {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    states["torch"] = torch.get_rng_state()
    # Only if CUDA is in use: initialising it just to read a state nobody drew from would
    # create a context (and hold memory) on every visible device.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng(states: dict) -> list[str]:
    """Set the generators captured by :func:`capture_rng`; return the sources restored.

    A source that was captured but is unavailable here (NumPy not installed, no CUDA, fewer
    CUDA devices) is skipped with a warning.
    """
    torch = import_torch()
    restored = []
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        restored.append("python")
    if "numpy" in states:
        try:
            import numpy as np
        except ImportError:
            warnings.warn(
                "The checkpoint holds NumPy's RNG state but NumPy is not installed.",
                CheckpointWarning,
                stacklevel=2,
            )
        else:
            s = states["numpy"]
            keys = s["keys"].numpy().astype(np.uint32)
            np.random.set_state(
                (s["name"], keys, int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"]))
            )
            restored.append("numpy")
    if "torch" in states:
        torch.set_rng_state(states["torch"])
        restored.append("torch")
    if "cuda" in states:
        saved = list(states["cuda"])
        if not torch.cuda.is_available():
            warnings.warn(
                "The checkpoint holds CUDA RNG states but CUDA is not available: not restored.",
                CheckpointWarning,
                stacklevel=2,
            )
        else:
            count = torch.cuda.device_count()
            if count != len(saved):
                warnings.warn(
                    "The checkpoint holds RNG states of %d CUDA devices, this machine has %d: "
                    "restoring the first %d." % (len(saved), count, min(count, len(saved))),
                    CheckpointWarning,
                    stacklevel=2,
                )
            for i in range(min(count, len(saved))):
                torch.cuda.set_rng_state(saved[i], device=i)
            restored.append("cuda")
    return restored
