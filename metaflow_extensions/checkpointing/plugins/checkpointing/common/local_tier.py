"""A checkpoint the flow's store lacks: read from this machine's local tier, or told where it is.

A task of ``@checkpoint(upload="end")`` commits its saves into a local tier (:mod:`..core.tier`:
a store on that machine's disk, same format, same keys as the flow's store) and uploads some of
them when it ends.  A reference to one of the others (``status`` ``"local"``, ``"uploading"``
or ``"failed"``) names the flow's store as its ``root`` (the key it would have once uploaded).
On the machine that holds the tier it loads from the tier (:func:`read`); elsewhere the error
says it was not uploaded, on which host and in which directory it is, and what to do
(:func:`not_uploaded`), never that it was deleted; on the machine whose tier no longer holds it
(the task's end keeps only what it uploads), it says the end removed it.

Which tiers: the one the task registered in its metadata (``checkpoint-tier``: ``{"host",
"path"}``; only when ``host`` is this machine and the path exists), and the tier of the store
under this machine's default base (``METAFLOW_CHECKPOINT_LOCAL_TIER``, else the system temp
directory: what a task without ``temp_dir_root=`` uses).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from typing import Optional

from ..core.manifest import Manifest, parse_key
from ..core.store import CheckpointStore
from ..core.tier import tier_root
from ..core.upload_status import (
    FAILED,
    LOCAL,
    UPLOADING,
    UploadRecords,
    effective,
)
from ..errors import CheckpointConfigError, CheckpointException, CheckpointNotFound
from ..storage.local import LocalStorage

#: The task metadata field where a task of ``upload="end"`` records its tier.
TIER_METADATA = "checkpoint-tier"

#: The statuses of a checkpoint that is (as far as its reference knows) only in a tier.
NOT_UPLOADED = (LOCAL, UPLOADING, FAILED)


class TierStore(CheckpointStore):
    """A local tier opened for reading, and the flow's store whose keys it holds (``remote``):
    a checkpoint read from it is a checkpoint of ``remote`` not uploaded yet."""

    def __init__(self, path: str, remote: CheckpointStore):
        super().__init__(LocalStorage(path), remote.options)
        self.path = path
        self.remote = remote


def recorded(metadata: Optional[dict]) -> Optional[dict]:
    """The ``{"host", "path"}`` a task's metadata records for its tier (any machine), if any."""
    raw = (metadata or {}).get(TIER_METADATA)
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return None
    return value


def registered_tier(metadata: Optional[dict]) -> Optional[str]:
    """The tier path a task's metadata records, when it is on this machine and exists."""
    value = recorded(metadata)
    if value is None or value.get("host") != socket.gethostname():
        return None
    path = value["path"]
    return path if os.path.isdir(path) else None


def default_tier(store_url: str) -> Optional[str]:
    """The tier of the store at ``store_url`` under this machine's default base, if present."""
    from .settings import local_tier_base

    try:
        base = local_tier_base() or tempfile.gettempdir()
    except CheckpointConfigError:  # a bad setting fails the task that uses it, not a reader
        base = tempfile.gettempdir()
    path = tier_root(store_url, base)
    return path if os.path.isdir(path) else None


def machine_tiers(store_url: str, metadata: Optional[dict]) -> list[str]:
    """The tiers of this machine that may hold checkpoints of the store at ``store_url``: the
    default one (:func:`default_tier`) and the one a task's ``metadata`` registers
    (:func:`registered_tier`), those present, each once."""
    found = (default_tier(store_url), registered_tier(metadata))
    return list(dict.fromkeys(p for p in found if p))


def task_metadata(key: str) -> Optional[dict]:
    """The metadata of the task that saved the checkpoint ``key`` (None: a named checkpoint,
    or Metaflow cannot tell)."""
    try:
        scope = parse_key(key).scope
    except CheckpointException:
        return None
    if scope.is_library:
        return None
    from metaflow import Task

    try:
        return Task(scope.pathspec, _namespace_check=False).metadata_dict
    except Exception:  # noqa: BLE001 (a hint for a message must never replace the message)
        return None


def status_in(tier: CheckpointStore, key: str) -> str:
    """A tier checkpoint's status as its record says, never ``uploaded`` (the flow's store,
    as read, lacks it)."""
    return effective(UploadRecords(tier.storage).get(key))


def read(
    store: CheckpointStore, key: str, status: Optional[str] = None
) -> tuple[CheckpointStore, Manifest]:
    """The store to read ``key``'s checkpoint from and its manifest: ``store`` when it holds the
    key, else this machine's tier holding it (a :class:`TierStore`).

    Parameters
    ----------
    status : str, optional
        The status a reference gave (None: unknown), for the message when no tier holds it.

    Raises
    ------
    CheckpointNotFound
        Neither holds it: :func:`not_uploaded`'s message when the reference says it was not
        uploaded or its task recorded a tier, else the store's own message.
    """
    try:
        return store, store.read(key)
    except CheckpointNotFound as exc:
        if isinstance(store, TierStore):
            raise
        missing = exc
    metadata = task_metadata(key)
    searched = False
    for path in machine_tiers(store.url, metadata):
        tier = TierStore(path, store)
        try:
            return tier, tier.read(key)
        except CheckpointNotFound:
            searched = True
            continue
    where = recorded(metadata)
    if status in NOT_UPLOADED or where is not None:
        # This machine's tier was read and lacks it, and no other machine is recorded as
        # holding it: the task's end removed it (not "it is only in a tier elsewhere").
        gone = searched and (where is None or where.get("host") == socket.gethostname())
        raise not_uploaded(key, store.url, status, where, gone=gone) from None
    raise missing


def not_uploaded(
    key: str, root: str, status: Optional[str], where: Optional[dict], *, gone: bool = False
) -> CheckpointNotFound:
    """The error of a checkpoint not in the flow's store ``root`` that a tier elsewhere holds
    (``status`` from its reference, ``where`` the ``{"host", "path"}`` its task recorded), or,
    with ``gone``, that this machine's tier held and no longer holds: a reference's status is
    a snapshot from when it was made, and the task's end removes what it does not upload."""
    if gone:
        return CheckpointNotFound(
            "Checkpoint %s is not in %s; it was saved with @checkpoint(upload='end')%s and "
            "was removed from the local tier when "
            "its task ended: upload='end' uploads only the newest latest=True checkpoint of "
            "each series and the keep_best ones, and drops the others (retention or a delete "
            "may also have removed it). Load an uploaded one (Checkpoint().get(task) or "
            "Checkpoint().list(task)), or save with @checkpoint(upload='each') to keep every "
            "checkpoint in the flow's store."
            % (key, root, " (status %r when its reference was made)" % status if status else "")
        )
    if where is not None:
        place = "the local tier of host %s at %s" % (where.get("host") or "?", where["path"])
    else:
        place = "the local tier of the machine that ran its task"
    if status in NOT_UPLOADED:
        what = (
            "was saved with @checkpoint(upload='end') and not uploaded (status %r): it is "
            "only in %s" % (status, place)
        )
    else:
        what = (
            "was saved by a task of @checkpoint(upload='end'): unless it was deleted, it was not "
            "uploaded and is only in %s" % place
        )
    return CheckpointNotFound(
        "Checkpoint %s is not in %s; it %s. Load it on that machine, or save with "
        "@checkpoint(upload='each') (or let the task end, which uploads its latest and best "
        "checkpoints) so that it is in the flow's store." % (key, root, what)
    )
