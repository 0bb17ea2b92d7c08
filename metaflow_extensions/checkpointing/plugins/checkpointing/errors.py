"""The one exception tree of metaflow-checkpointing.

Every error a user can see derives from :class:`CheckpointException`, itself a
``MetaflowException`` so Metaflow prints it as a one-line, named error (its ``headline``, then
its message) instead of an internal traceback::

    MetaflowException
    └── CheckpointException            root; never raised itself
        ├── CheckpointConfigError      a bad decorator attribute, setting, name, metadata or
        │   │                          path: raised before any I/O
        │   ├── CheckpointMetadataError  a metadata value that cannot be stored (names its
        │   │                            key path, e.g. ``metadata['opt']['lr']``)
        │   ├── CheckpointDependencyError  an optional package a feature needs is missing
        │   │                            (also an ImportError); names the extra to install
        │   └── CheckpointNotEnabled     ``current.checkpoint`` in a step without
        │                                ``@checkpoint`` (also an AttributeError)
        ├── CheckpointNotFound         a reference, key, name or pathspec naming no committed
        │                              checkpoint (or a file a checkpoint does not have)
        ├── CheckpointScopeError       a checkpoint of another namespace or flow than the caller's
        ├── CheckpointIncomplete       a manifest lists blobs that are missing from the store
        ├── CheckpointIntegrityError   stored bytes do not match the hash the manifest records
        ├── ManifestError              a manifest (or manifest key) that cannot be read, parsed
        │                              or validated; never taken for "no checkpoint"
        ├── StorageError               the store failed, or stayed unavailable after retries;
        │   │                          also a load's destination failing to be written
        │   └── StorageNotFound        a storage key that does not exist (internal: callers
        │                              translate it, e.g. into CheckpointNotFound)
        ├── CheckpointInterrupted      SIGTERM/SIGINT reached the task; pending saves committed
        ├── CheckpointPaused           ``current.checkpoint.pause()``: the task ends as paused
        └── TrainingStateError         (frameworks/torch_util.py) a training state that cannot
                                       be written or restored

Warnings: :class:`CheckpointMetadataWarning` (a ``UserWarning``), once per save whose metadata
had NaN or infinite values, stored as ``null``.  Every warning of ours is a
:class:`CheckpointWarning`, which a task shows whatever Metaflow's own filter says
(``task/session.py``).

Every exception carries structured fields, readable as attributes (None when not given):

* ``key``: the checkpoint (manifest) key, blob name or storage key concerned;
* ``path``: a local path, or the path of a file inside a checkpoint;
* ``url``: the store (or object) URL as a user would type it;
* ``reason``: a short cause, e.g. the backend's own error.

``CheckpointX("message")`` keeps the message as given.  Without a message, the class's
``template`` is formatted from the fields: ``{field}`` is replaced by its value, and a
``[bracketed part]`` is kept only when every field it names was given, so
``CheckpointIntegrityError(key=k, path=p)`` reads "Checkpoint k: stored data of p does not
match its recorded hash; ...".
Exceptions pickle with their fields (Metaflow may pass them between processes).
"""

from __future__ import annotations

import re
import string
from typing import Any, Optional

from metaflow.exception import MetaflowException

#: The structured fields every exception of the tree carries.
FIELDS = ("key", "path", "url", "reason")

_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def _render(template: str, fields: dict) -> str:
    """``template`` with ``[optional parts]`` whose fields are all set and ``{field}`` filled."""

    def optional(match: re.Match) -> str:
        part = match.group(1)
        names = [name for _, name, _, _ in string.Formatter().parse(part) if name]
        return part if all(fields.get(n) is not None for n in names) else ""

    return _OPTIONAL.sub(optional, template).format_map(fields)


class CheckpointException(MetaflowException):
    """Root of all metaflow-checkpointing errors.

    Parameters
    ----------
    msg : str, optional
        The message.  When empty, it is formatted from :attr:`template` and the fields.
    lineno, source_file : optional
        As for ``MetaflowException``.
    key : str, optional
        The checkpoint key, blob name or storage key concerned.
    path : str, optional
        A local path, or the path of a file inside the checkpoint.
    url : str, optional
        The store or object URL.
    reason : str, optional
        A short cause (e.g. the backend's error).
    """

    headline = "Checkpoint error"
    #: Message used when none is passed: ``{field}``s filled, ``[parts]`` kept if all set.
    template = "Checkpoint error[ with {key}][ (file {path})][ at {url}][: {reason}]."

    def __init__(
        self,
        msg: str = "",
        lineno: Optional[int] = None,
        source_file: Optional[str] = None,
        *,
        key: Optional[str] = None,
        path: Optional[str] = None,
        url: Optional[str] = None,
        reason: Optional[str] = None,
    ):
        self.key = key
        self.path = path
        self.url = url
        self.reason = reason
        super().__init__(msg or _render(self.template, self.fields), lineno, source_file)

    @property
    def fields(self) -> dict[str, Any]:
        """The structured fields, by name (None for those not given)."""
        return {name: getattr(self, name, None) for name in FIELDS}

    def __reduce__(self):
        # MetaflowException passes no args to Exception, so the default reduce would rebuild
        # the exception from nothing; rebuild it from its message and fields instead.
        return (
            _rebuild,
            (type(self), self.message, self.line_no, self.source_file, self.fields),
            self.__dict__,
        )


def _rebuild(cls: type, msg: str, lineno: Any, source_file: Any, fields: dict):
    """Unpickle an exception of the tree (module-level so pickle can find it)."""
    return cls(msg, lineno, source_file, **fields)


class CheckpointConfigError(CheckpointException):
    """Invalid decorator attribute, setting, name, metadata or path (raised before any I/O)."""

    headline = "Invalid checkpoint configuration"
    template = "Invalid checkpoint configuration[ for {path}][: {reason}]."


class CheckpointMetadataError(CheckpointConfigError):
    """A metadata value that cannot be stored; the message names its key path
    (``metadata['opt']['lr']``), the reason and what to pass instead (raised before any I/O)."""

    headline = "Invalid checkpoint metadata"
    template = "Invalid checkpoint metadata[: {reason}]."


class CheckpointWarning(UserWarning):
    """Base of every warning this package gives.  Metaflow ignores all warnings in a task
    (``warnings.filterwarnings("ignore")``); a ``@checkpoint`` task puts an ``"always"`` filter
    for this class in front, so ours reach the task's stderr, each once per event."""


class CheckpointMetadataWarning(CheckpointWarning):
    """Metadata held NaN or infinite values (Python, NumPy or torch); they are stored as
    ``null``.  Issued once per save, naming the key paths replaced."""


class CheckpointDependencyError(CheckpointConfigError, ImportError):
    """An optional package a feature needs is not installed (or fails to import).

    Raised when the object needing it is created or the store opened, never mid-training; the
    message names the package and the extra to install
    (``pip install "metaflow-checkpointing[torch]"``).  Also an ``ImportError``, so code that
    guards an optional import with ``except ImportError`` keeps working.
    """

    headline = "Missing optional package"
    template = "A package this needs is not installed[: {reason}]."

    def __init__(self, *args: Any, **fields: Any):
        super().__init__(*args, **fields)
        # ImportError.__init__ (reached through MetaflowException's) resets its own ``path``
        # slot, which is also our field: set it again.
        self.path = fields.get("path")

    @classmethod
    def of(cls, feature: str, package: str, extra: str, cause: BaseException, **fields: Any):
        """The error for ``feature`` failing to import ``package``, which ``extra`` installs.

        ``cause`` is the ``ImportError`` met; its text becomes :attr:`reason` (a missing module
        or a broken install say different things).  ``fields``: ``url`` etc., as for any error.
        """
        reason = "%s: %s" % (type(cause).__name__, cause)
        return cls(
            "%s needs the package %r, which cannot be imported (%s). Install it with: "
            'pip install "metaflow-checkpointing[%s]"' % (feature, package, reason, extra),
            reason=reason,
            **fields,
        )


class CheckpointNotEnabled(CheckpointConfigError, AttributeError):
    """``current.checkpoint`` used in a step that has no ``@checkpoint`` decorator.

    Also an ``AttributeError``: ``hasattr(current, "checkpoint")`` stays False in such a step.
    """

    headline = "@checkpoint missing"
    template = "current.checkpoint needs @checkpoint on the step[: {reason}]."


class CheckpointNotFound(CheckpointException):
    """A reference, key or pathspec that names no committed checkpoint."""

    headline = "Checkpoint not found"
    template = "No checkpoint[ {key}][ with the file {path}][ in {url}][: {reason}]."


class CheckpointScopeError(CheckpointException):
    """A checkpoint that belongs to another namespace or flow than the caller's."""

    headline = "Checkpoint outside this scope"
    template = "Checkpoint[ {key}] is outside this scope[: {reason}]."


class CheckpointIncomplete(CheckpointException):
    """A checkpoint whose manifest lists data that is missing from the store."""

    headline = "Incomplete checkpoint"
    template = (
        "Checkpoint[ {key}] is incomplete: data[ of {path}] missing[ from {url}][ ({reason})]; "
        "load another checkpoint."
    )


class CheckpointIntegrityError(CheckpointException):
    """Stored bytes that do not match the hash recorded in the manifest."""

    headline = "Checkpoint integrity error"
    template = (
        "Checkpoint[ {key}]: stored data[ of {path}] does not match its recorded hash"
        "[ ({reason})]; it is corrupt. Load another checkpoint."
    )


class ManifestError(CheckpointException):
    """A manifest that cannot be read, parsed or validated (never treated as 'no checkpoint')."""

    headline = "Unreadable checkpoint manifest"
    template = "Manifest[ {key}] is unreadable or invalid[ (path {path})][: {reason}]."


class StorageError(CheckpointException):
    """The checkpoint store failed or stayed unavailable after bounded retries."""

    headline = "Checkpoint storage error"
    template = "Checkpoint storage failed[ at {url}][ (key {key})][: {reason}]."


class StorageNotFound(StorageError):
    """A storage key that does not exist (internal; translated to a named error by callers)."""

    headline = "Object not found in checkpoint storage"
    template = "No object[ at {url}][ with key {key}]."


class CheckpointInterrupted(CheckpointException):
    """The task received SIGTERM or SIGINT; pending saves were committed first (the task fails
    so that ``@retry`` or ``resume`` continues from its last checkpoint)."""

    headline = "Task interrupted"
    template = "Task interrupted[: {reason}]."


class CheckpointPaused(CheckpointException):
    """Raised by ``current.checkpoint.pause()``: the task ends as paused, is not retried, and
    ``resume`` continues from its last checkpoint."""

    headline = "Task paused"
    template = "Task paused[: {reason}]."


__all__ = [
    "CheckpointConfigError",
    "CheckpointDependencyError",
    "CheckpointException",
    "CheckpointIncomplete",
    "CheckpointIntegrityError",
    "CheckpointInterrupted",
    "CheckpointMetadataError",
    "CheckpointNotEnabled",
    "CheckpointNotFound",
    "CheckpointPaused",
    "CheckpointScopeError",
    "ManifestError",
    "StorageError",
    "StorageNotFound",
]
