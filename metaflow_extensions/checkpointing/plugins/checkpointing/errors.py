"""The one exception tree of metaflow-checkpointing.

Every error a user can see derives from :class:`CheckpointException`, itself a
``MetaflowException`` so Metaflow prints it as a one-line, named error instead of an internal
traceback.  Messages name the checkpoint key, scope or setting involved and say what to do.
"""

from __future__ import annotations

from metaflow.exception import MetaflowException


class CheckpointException(MetaflowException):
    """Root of all metaflow-checkpointing errors."""

    headline = "Checkpoint error"


class CheckpointConfigError(CheckpointException):
    """Invalid decorator attribute, setting, name, metadata or path (raised before any I/O)."""

    headline = "Invalid checkpoint configuration"


class CheckpointNotFound(CheckpointException):
    """A reference, key or pathspec that names no committed checkpoint."""

    headline = "Checkpoint not found"


class CheckpointScopeError(CheckpointException):
    """A checkpoint that belongs to another namespace or flow than the caller's."""

    headline = "Checkpoint outside this scope"


class CheckpointIncomplete(CheckpointException):
    """A checkpoint whose manifest lists data that is missing from the store."""

    headline = "Incomplete checkpoint"


class CheckpointIntegrityError(CheckpointException):
    """Stored bytes that do not match the hash recorded in the manifest."""

    headline = "Checkpoint integrity error"


class ManifestError(CheckpointException):
    """A manifest that cannot be read, parsed or validated (never treated as 'no checkpoint')."""

    headline = "Unreadable checkpoint manifest"


class StorageError(CheckpointException):
    """The checkpoint store failed or stayed unavailable after bounded retries."""

    headline = "Checkpoint storage error"


class StorageNotFound(StorageError):
    """A storage key that does not exist (internal; translated to a named error by callers)."""

    headline = "Object not found in checkpoint storage"


class CheckpointInterrupted(CheckpointException):
    """The task received SIGTERM or SIGINT; pending saves were committed first (the task fails
    so that ``@retry`` or ``resume`` continues from its last checkpoint)."""

    headline = "Task interrupted"


class CheckpointPaused(CheckpointException):
    """Raised by ``current.checkpoint.pause()``: the task ends as paused, is not retried, and
    ``resume`` continues from its last checkpoint."""

    headline = "Task paused"


__all__ = [
    "CheckpointConfigError",
    "CheckpointException",
    "CheckpointIncomplete",
    "CheckpointIntegrityError",
    "CheckpointInterrupted",
    "CheckpointNotFound",
    "CheckpointPaused",
    "CheckpointScopeError",
    "ManifestError",
    "StorageError",
    "StorageNotFound",
]
