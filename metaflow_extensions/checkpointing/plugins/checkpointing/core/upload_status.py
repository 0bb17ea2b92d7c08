"""Upload status of the checkpoints of a local tier (``@checkpoint(upload="end")``).

A checkpoint saved into a tier (:mod:`.tier`) is ``local`` until the task's end uploads it to the
flow's store: then ``uploading``, and ``uploaded`` once its manifest is committed there, or
``failed`` when the upload gave up (``upload_errors="warn"``).  A checkpoint of
``upload="each"`` is ``uploaded`` as soon as it is committed.

The tier keeps one small JSON record per checkpoint it tried to upload,
``uploads/<task path>/<manifest file>`` (:func:`.layout.upload_record_key`), rewritten whole
(atomic put) at each change.  The record is a hint: the flow's store is the truth, so
a reader says ``uploaded`` for a key found there whatever the record says; for one the
flow's store lacks, :func:`effective` says ``local`` for an ``uploaded`` record and for an
``uploading`` record left by a writer that died (its pid is gone from this host).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from ..errors import CheckpointConfigError, StorageNotFound
from ..storage.base import Storage
from .layout import upload_record_key, upload_record_manifest

LOCAL, UPLOADING, UPLOADED, FAILED = "local", "uploading", "uploaded", "failed"
#: Every status, in the order a checkpoint goes through them.
STATUSES = (LOCAL, UPLOADING, UPLOADED, FAILED)
FORMAT = "metaflow-checkpointing-upload/1"


@dataclass(frozen=True)
class Record:
    """The last status a tier recorded for one checkpoint.

    ``at`` is the writer's wall clock (seconds since the epoch) when it was recorded; ``pid``
    and ``host`` the process that recorded it (a dead writer's ``uploading`` is stale).
    """

    status: str
    error: Optional[str]
    at: float
    pid: int
    host: str


def check_status(status: object) -> str:
    """``status`` if it is one of :data:`STATUSES`.

    Raises
    ------
    CheckpointConfigError
        Naming the value and the statuses.
    """
    if not isinstance(status, str) or status not in STATUSES:
        raise CheckpointConfigError(
            "%r is not a checkpoint upload status: use one of %s."
            % (status, ", ".join(repr(s) for s in STATUSES))
        )
    return status


class UploadRecords:
    """The upload status records of one tier.

    Parameters
    ----------
    tier_storage : Storage
        The tier's storage (its root, as for its :class:`.store.CheckpointStore`).
    """

    def __init__(self, tier_storage: Storage):
        self.storage = tier_storage

    def set(self, key: str, status: str, error: Optional[str] = None) -> None:
        """Record ``status`` (and the ``error`` that made an upload fail) for the checkpoint at
        ``key``; one atomic put replacing the previous record."""
        check_status(status)
        body = {
            "format": FORMAT,
            "status": status,
            "error": None if error is None else str(error),
            "at": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self.storage.put_bytes(upload_record_key(key), json.dumps(body).encode("utf-8"))

    def get(self, key: str) -> Optional[Record]:
        """The record of the checkpoint at ``key``; None when there is none (or it is
        unreadable: a record is a hint, and no record reads as ``local``)."""
        try:
            data = self.storage.get_bytes(upload_record_key(key))
        except StorageNotFound:
            return None
        return _parse(data)

    def of_prefix(self, task_prefix: str) -> dict[str, Record]:
        """Every record under ``task_prefix`` (a task's manifest prefix), by manifest key: one
        listing, then the records read in parallel."""
        keys = [o.key for o in self.storage.list(upload_record_key(task_prefix))]
        if not keys:
            return {}

        def read(k: str) -> Optional[Record]:
            try:
                return _parse(self.storage.get_bytes(k))
            except StorageNotFound:  # replaced or removed since the listing
                return None

        with ThreadPoolExecutor(min(8, len(keys))) as pool:
            found = list(pool.map(read, keys))
        out = {}
        for k, record in zip(keys, found):
            manifest = upload_record_manifest(k)
            if record is not None and manifest is not None:
                out[manifest] = record
        return out

    def delete(self, key: str) -> None:
        """Remove the record of the checkpoint at ``key`` (it was deleted from the tier)."""
        self.storage.delete(upload_record_key(key))


def _parse(data: bytes) -> Optional[Record]:
    try:
        d = json.loads(bytes(data).decode("utf-8"))
        status, error, at, pid, host = d["status"], d["error"], d["at"], d["pid"], d["host"]
    except (ValueError, KeyError, TypeError):
        return None
    ok = (
        status in STATUSES
        and (error is None or isinstance(error, str))
        and isinstance(at, (int, float))
        and not isinstance(at, bool)
        and math.isfinite(at)
        and isinstance(pid, int)
        and not isinstance(pid, bool)
        and isinstance(host, str)
    )
    return Record(status, error, float(at), pid, host) if ok else None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def live_writer(host: str, pid: int) -> bool:
    """Whether process ``pid`` of ``host`` is alive on this host (a task that may still load or
    upload its task's tier checkpoints)."""
    return host == socket.gethostname() and _alive(pid)


def effective(record: Optional[Record]) -> str:
    """The status a reader shows for a checkpoint it found in a tier and not in the flow's
    store (one found there is ``uploaded``, whatever the record says: the reader says so).

    No record: ``local``.  An ``uploaded`` record: ``local`` (the flow's store, as read, lacks
    it: deleted there since, or uploaded after the reading; either way a reader does not claim
    it safe without seeing it there).  An ``uploading`` record of a process no longer alive on
    this host: ``local`` (its writer died mid-upload; the next attempt's end uploads it again).
    Else the record's status (an ``uploading`` record of another host cannot be judged and is
    shown as it is).
    """
    if record is None or record.status == UPLOADED:
        return LOCAL
    if record.status == UPLOADING and record.host == socket.gethostname():
        return UPLOADING if _alive(record.pid) else LOCAL
    return record.status
