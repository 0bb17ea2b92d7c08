"""Scopes: where a checkpoint belongs (namespace, flow, step, foreach split, run, task, attempt).

A scope names the manifest prefixes its lookups list (:meth:`Scope.task_prefix` for ``@retry``,
:meth:`Scope.run_prefix` for ``resume``, :meth:`Scope.lineage_prefix` for ``eager``); the keys
themselves are spelled by :mod:`.layout`.  Checkpoint names are validated here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional

from ..errors import CheckpointConfigError
from . import layout
from .layout import LIBRARY

#: The foreach path of a step that is not inside any foreach.
NO_FOREACH = "_"
DEFAULT_NAME = "mfchckpt"
MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: One character a name cannot hold (outside ``_NAME_RE``'s class).
_INVALID = re.compile(r"[^A-Za-z0-9_.\-]")


def sanitized(text: str, limit: int = MAX_NAME_LENGTH) -> str:
    """``text`` spelled as a valid name of at most ``limit`` characters: every character a name
    cannot hold made ``_``, ``..`` made ``__``, cut to ``limit`` without a trailing ``.``, and
    ``_`` put first when the first character cannot start a name.  The one sanitiser of the
    name grammar: the suggestion of :func:`validate_name` and the stored name of a free-text
    model label (``task/model_runtime.label_name``) are spelled by it, so they agree.

    >>> sanitized("-x y")
    '_-x_y'
    """
    out = _INVALID.sub("_", text).replace("..", "__")[:limit].rstrip(".")
    if not out or not _NAME_RE.match(out[0]):
        out = "_" + out[: limit - 1]
    return out


def validate_name(name: object) -> str:
    """Check a checkpoint series name; return it.

    Raises
    ------
    CheckpointConfigError
        If the name is empty, too long, or has characters outside ``A-Z a-z 0-9 _ . -``.
    """
    if not isinstance(name, str) or not name:
        raise CheckpointConfigError(
            "Checkpoint name %r is invalid: it must be a non-empty string such as 'mfchckpt' or "
            "'best-model'." % (name,)
        )
    if len(name) > MAX_NAME_LENGTH:
        raise CheckpointConfigError(
            "Checkpoint name %r... is %d characters long; the limit is %d."
            % (name[:20], len(name), MAX_NAME_LENGTH)
        )
    if ".." in name or not _NAME_RE.fullmatch(name):
        # Free-text names of other @checkpoint extensions land here: suggest a valid spelling
        # (a name selects a series in listings, load policies, retention and the CLI).
        suggestion = sanitized(name)
        raise CheckpointConfigError(
            "Checkpoint name %r is invalid: use letters, digits, '_', '-' and '.', starting with a "
            "letter, digit or '_', without '/', '..', spaces or control characters (e.g. %r)."
            % (name, suggestion)
        )
    return name


def foreach_path(indices: list[int] | tuple[int, ...]) -> str:
    """The foreach path of a task from the indices of its enclosing foreach splits."""
    return ".".join(str(int(i)) for i in indices) if indices else NO_FOREACH


@dataclass(frozen=True)
class Scope:
    """Everything a checkpoint belongs to.

    Parameters
    ----------
    namespace : str
        Metaflow namespace of the writer, e.g. ``user:alice`` or ``production:token``.
    flow, step : str
        Flow and step names.
    foreach : str
        Foreach path (``"3"``, ``"3.0"``) or ``"_"`` outside any foreach.
    run, task : str
        Run and task ids.
    attempt : int
        Attempt (retry count) that wrote the checkpoint.
    """

    namespace: str
    flow: str
    step: str
    foreach: str
    run: str
    task: str
    attempt: int = 0

    @property
    def pathspec(self) -> str:
        return "%s/%s/%s/%s" % (self.flow, self.run, self.step, self.task)

    @property
    def is_library(self) -> bool:
        """True for a named checkpoint saved outside any task."""
        return self.namespace == LIBRARY and self.flow == LIBRARY

    def step_prefix(self) -> str:
        return layout.step_prefix(self.namespace, self.flow, self.step)

    def lineage_prefix(self) -> str:
        """All runs of this step and foreach split (the ``eager`` lookup)."""
        return layout.lineage_prefix(self.namespace, self.flow, self.step, self.foreach)

    def run_prefix(self, run: Optional[str] = None) -> str:
        """This step and split within one run (the ``resume`` lookup)."""
        run = run if run is not None else self.run
        return layout.run_prefix(self.namespace, self.flow, self.step, self.foreach, run)

    def task_prefix(self) -> str:
        """This task, all attempts (the ``@retry`` lookup)."""
        return layout.task_prefix(
            self.namespace, self.flow, self.step, self.foreach, self.run, self.task
        )

    def to_dict(self) -> dict:
        return {
            "namespace": self.namespace,
            "flow": self.flow,
            "step": self.step,
            "foreach": self.foreach,
            "run": self.run,
            "task": self.task,
            "attempt": self.attempt,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scope:
        return cls(
            namespace=str(d["namespace"]),
            flow=str(d["flow"]),
            step=str(d["step"]),
            foreach=str(d["foreach"]),
            run=str(d["run"]),
            task=str(d["task"]),
            attempt=int(d["attempt"]),
        )


def library_scope(name: str) -> Scope:
    """The scope of named checkpoints saved outside any task: namespace and flow
    :data:`.layout.LIBRARY`, the name as step (every version of one name is one listing)."""
    return Scope(LIBRARY, LIBRARY, validate_name(name), NO_FOREACH, NO_FOREACH, NO_FOREACH, 0)


@functools.lru_cache(maxsize=4096)
def shared_scope(
    namespace: str, flow: str, step: str, foreach: str, run: str, task: str, attempt: int
) -> Scope:
    """``Scope(...)`` of these fields, one object for every caller (a scope is immutable): a
    listing of 100,000 keys of one task attempt builds one scope, not 100,000 (fewer objects
    to allocate and for the cyclic GC to scan)."""
    return Scope(namespace, flow, step, foreach, run, task, attempt)
