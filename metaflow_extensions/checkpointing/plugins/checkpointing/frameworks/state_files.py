"""The files of a training state, written from the live objects or from a host-memory copy.

``TrainingState.write`` (blocking) and the background half of ``TrainingState.save(...,
blocking=False)`` (``staged_state.py``) both end here, in :func:`write_files`, so the two write
the same files from the same values: a ``.safetensors`` file per module, a ``.pt`` file per
other object, ``rng.pt``, then ``state.json`` last.

torch and safetensors are imported inside functions only.  ``pytorch.py`` imports this module
inside ``write``/``read`` only, so ``import metaflow`` does not load it
(``tests/test_packaging.py::test_import_metaflow_stays_light``).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .torch_util import (
    TrainingStateError,
    capture_rng,
    import_torch,
    is_module,
    refusal,
    replace_atomically,
    unwrap,
)

STATE_FILE = "state.json"
RNG_FILE = "rng.pt"
FORMAT = "metaflow-checkpointing/training-state"
FORMAT_VERSION = 1


@dataclass
class Entry:
    """One tracked object as it is written: a module (``module``, or its ``tensors`` already
    de-duplicated as ``safetensors.torch.save_model`` does, with that ``metadata``) or any
    other object's ``state`` (its ``state_dict()``, or a copy of it)."""

    kind: str  #: "module" or "state_dict"
    type_name: str  #: the object's class, recorded for state_dict entries
    module: Any = None
    tensors: Optional[dict[str, Any]] = None
    metadata: Optional[dict[str, str]] = None
    state: Any = None


@dataclass
class Parts:
    """Everything a write reads, taken at one moment."""

    step: int
    epoch: int
    extra: Any  #: ``extra`` after a JSON round trip
    entries: dict[str, Entry] = field(default_factory=dict)
    rng: Optional[dict] = None  #: :func:`capture_rng`'s states, or None (``rng=False``)


def checked_counters_and_extra(step: Any, epoch: Any, extra: Any) -> Any:
    """``extra`` after a JSON round trip, once the counters are known to be ints.

    Raises
    ------
    TrainingStateError
        A counter is not an int, or ``extra`` is not JSON-serialisable.
    """
    for counter, value in (("step", step), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainingStateError(
                "state.%s=%r must be an int (e.g. int(%s))." % (counter, value, counter)
            )
    try:
        return json.loads(json.dumps(extra))
    except (TypeError, ValueError) as exc:
        raise TrainingStateError(
            "state.extra must be JSON-serialisable (numbers, strings, lists, dicts): %s. "
            "Convert tensors with .item() or .tolist()." % exc
        ) from exc


def live_parts(objects: dict[str, Any], step: Any, epoch: Any, extra: Any, rng: bool) -> Parts:
    """The parts of a blocking write: references to the live objects (nothing copied)."""
    parts = Parts(step, epoch, checked_counters_and_extra(step, epoch, extra))
    for name, obj in objects.items():
        if is_module(obj):
            parts.entries[name] = Entry("module", type_name(obj), module=unwrap(obj))
        else:
            parts.entries[name] = Entry("state_dict", type_name(obj), state=obj.state_dict())
    parts.rng = capture_rng() if rng else None
    return parts


def type_name(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s class, as ``state.json`` records it."""
    return "%s.%s" % (type(obj).__module__, type(obj).__qualname__)


def write_files(
    parts: Parts,
    directory: str,
    weights_only: bool,
    abandoned: Callable[[], bool] = lambda: False,
) -> dict:
    """Write ``parts`` into ``directory`` (created if needed); return ``state.json``'s contents.

    Each file goes through a temporary name renamed into place, ``state.json`` last, so a
    directory never describes files that are not complete.  ``abandoned()`` is looked at
    before each file: a background write whose save was abandoned stops there.
    """
    torch = import_torch()
    os.makedirs(directory, exist_ok=True)
    files: dict[str, dict] = {}

    def stop_if_abandoned() -> None:
        if abandoned():
            raise TrainingStateError("The save was abandoned while its files were written.")

    for name, entry in parts.entries.items():
        stop_if_abandoned()
        if entry.kind == "module":
            from safetensors.torch import save_file, save_model

            path = os.path.join(directory, name + ".safetensors")
            if entry.module is not None:
                replace_atomically(path, lambda p, m=entry.module: save_model(m, p))
            else:
                replace_atomically(
                    path,
                    lambda p, e=entry: save_file(e.tensors, p, metadata=e.metadata),
                )
            files[name] = {"file": name + ".safetensors", "kind": "module"}
        else:
            path = os.path.join(directory, name + ".pt")
            replace_atomically(path, lambda p, s=entry.state: torch.save(s, p))
            if weights_only:
                check_loadable(path, name, entry.type_name)
            files[name] = {"file": name + ".pt", "kind": "state_dict", "type": entry.type_name}
    stop_if_abandoned()
    if parts.rng is not None:
        states = parts.rng
        replace_atomically(os.path.join(directory, RNG_FILE), lambda p: torch.save(states, p))
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": parts.step,
        "epoch": parts.epoch,
        "extra": parts.extra,
        "objects": files,
        "rng": {"file": RNG_FILE, "sources": sorted(parts.rng)} if parts.rng is not None else None,
        "torch_version": str(torch.__version__),
    }

    def write_json(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)

    replace_atomically(os.path.join(directory, STATE_FILE), write_json)
    return doc


def check_loadable(path: str, name: str, type_name: str) -> None:
    """Read a just-written ``.pt`` back as ``read()`` will (memory-mapped), so an unrestorable
    state fails when it is saved rather than on the retry that needs it."""
    torch = import_torch()
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise TrainingStateError(
            "The state_dict() of %s (%s) cannot be read back with "
            "torch.load(weights_only=True), so it could not be restored safely: %s. Make it "
            "hold only tensors and plain Python values, or register its classes with "
            "torch.serialization.add_safe_globals([...])."
            % (name, type_name.rsplit(".", 1)[-1], refusal(exc))
        ) from exc
