"""``load_model`` and ``delete_model``: the reference extension's top-level functions, on
``Checkpoint()`` (from a notebook, a script, or a step)."""

from __future__ import annotations

import os
from typing import Any

from ..plugins.checkpointing.errors import CheckpointConfigError, CheckpointNotFound


def load_model(reference: Any, path: str) -> str:
    """Download a model or checkpoint into the directory ``path``; return ``path``.

    Parameters
    ----------
    reference : CheckpointReference, dict, str or metaflow.Task
        What ``current.model.save``, ``current.checkpoint.save`` or
        ``current.huggingface_hub.snapshot_download`` returned (e.g.
        ``Run(...).data.my_model``), its key or URL, a named checkpoint ``"label"`` /
        ``"label@<version>"``, or any spelling ``Checkpoint().load`` accepts; resolved with
        the namespace rules of ``Checkpoint().load`` (the runs of your current namespace).
    path : str
        Target directory: created if absent; same-named files are replaced, others left.

    Raises
    ------
    CheckpointConfigError
        ``reference`` or ``path`` is None, or ``path`` is a file.
    CheckpointNotFound
        Nothing is stored under that reference.
    """
    if reference is None or path is None:
        raise CheckpointConfigError(
            "load_model(reference, path) needs both: a reference (e.g. Run(...).data.my_model) "
            "and a target directory."
        )
    from ..plugins.checkpointing.client import Checkpoint
    from ..plugins.checkpointing.task.deps import require_client_packages

    require_client_packages("load_model()")  # named before any store is touched
    with Checkpoint() as client:
        client.load(reference, os.fspath(path), force=True)
    return os.fspath(path)


def delete_model(reference: Any) -> bool:
    """Delete one model version or checkpoint (its manifest; files no other checkpoint uses are
    reclaimed by ``metaflow checkpoint gc``).

    Returns True once deleted, False when nothing is stored under ``reference`` (already
    deleted).

    Raises
    ------
    CheckpointConfigError
        ``reference`` is None, or the checkpoint is pinned (unpin it first: nothing is deleted).
    """
    if reference is None:
        raise CheckpointConfigError(
            "delete_model(None): pass the reference to delete (e.g. Run(...).data.my_model)."
        )
    from ..plugins.checkpointing.client import Checkpoint
    from ..plugins.checkpointing.task.deps import require_client_packages

    require_client_packages("delete_model()")  # named before any store is touched
    with Checkpoint() as client:
        try:
            client.delete(reference)
        except CheckpointNotFound:
            return False
    return True
