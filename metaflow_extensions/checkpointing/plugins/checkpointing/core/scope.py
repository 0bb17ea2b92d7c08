"""Scopes: where a checkpoint belongs, and the key prefixes that make each lookup one listing.

Manifest keys are laid out most-general first::

    manifests/<namespace>/<flow>/<step>/<foreach path>/<run>/<task>/<manifest file>

so that every load policy is a single prefix listing:

* latest of a task (``@retry``)                   -> ``.../<foreach>/<run>/<task>/``
* counterpart in the origin run (``resume``)      -> ``.../<foreach>/<origin run>/``
* any earlier run of the same step and split      -> ``.../<step>/<foreach>/``
* every checkpoint of a step (``list(within_task=False)``) -> ``.../<step>/``

Components are percent-encoded, so namespaces such as ``user:alice`` are safe on every backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, unquote

from ..errors import CheckpointConfigError, ManifestError

MANIFESTS = "manifests"
BLOBS = "blobs"
#: The foreach path of a step that is not inside any foreach.
NO_FOREACH = "_"
DEFAULT_NAME = "mfchckpt"
#: Namespace, flow, run and task of checkpoints saved outside any task (named uploads such as
#: ``metaflow checkpoint upload ./model.pt --name resnet50``): a store-wide library in which the
#: step component is the checkpoint name, so every version of one name is one prefix listing.
LIBRARY = "_library"
MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def encode(component: str) -> str:
    """Percent-encode one key component (no '/', never empty)."""
    encoded = quote(str(component), safe="") or "%00"
    # '.' and '..' are left alone by quote() but are not valid key components anywhere.
    return "%2E" * len(encoded) if encoded in (".", "..") else encoded


def decode(component: str) -> str:
    return unquote(component)


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
        raise CheckpointConfigError(
            "Checkpoint name %r is invalid: use letters, digits, '_', '-' and '.', starting with a "
            "letter, digit or '_', without '/', '..', spaces or control characters." % name
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
        return step_prefix(self.namespace, self.flow, self.step)

    def lineage_prefix(self) -> str:
        """All runs of this step and foreach split (the ``eager`` lookup)."""
        return self.step_prefix() + encode(self.foreach) + "/"

    def run_prefix(self, run: Optional[str] = None) -> str:
        """This step and split within one run (the ``resume`` lookup)."""
        return self.lineage_prefix() + encode(run if run is not None else self.run) + "/"

    def task_prefix(self) -> str:
        """This task, all attempts (the ``@retry`` lookup)."""
        return self.run_prefix() + encode(self.task) + "/"

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
    """The scope of named checkpoints saved outside any task (see :data:`LIBRARY`)."""
    return Scope(LIBRARY, LIBRARY, validate_name(name), NO_FOREACH, NO_FOREACH, NO_FOREACH, 0)


def library_prefix() -> str:
    """Every named checkpoint saved outside any task."""
    return flow_prefix(LIBRARY, LIBRARY)


def namespace_prefix(namespace: str) -> str:
    return "%s/%s/" % (MANIFESTS, encode(namespace))


def flow_prefix(namespace: str, flow: str) -> str:
    return namespace_prefix(namespace) + encode(flow) + "/"


def step_prefix(namespace: str, flow: str, step: str) -> str:
    return flow_prefix(namespace, flow) + encode(step) + "/"


#: A blob name: a BLAKE3 digest as 64 lowercase hex digits.
BLOB_NAME_RE = re.compile(r"[0-9a-f]{64}")
_is_hex64 = BLOB_NAME_RE.fullmatch


def is_blob_name(name: object) -> bool:
    """Whether ``name`` is a blob name: a BLAKE3 digest as 64 lowercase hex digits."""
    return type(name) is str and _is_hex64(name) is not None


def blob_key(digest: str) -> str:
    """Key of a content-addressed blob.

    Raises
    ------
    ManifestError
        If ``digest`` is not a 64-hex BLAKE3 digest: a name from a manifest becomes a storage
        key, and on local stores a path that is opened, so nothing else may get this far.
    """
    if type(digest) is not str or _is_hex64(digest) is None:
        raise ManifestError(
            "%r is not a blob name (a 64-hex BLAKE3 digest); refusing to read or write it."
            % (digest if len(str(digest)) <= 80 else str(digest)[:77] + "...",)
        )
    return "%s/%s/%s" % (BLOBS, digest[:2], digest)
