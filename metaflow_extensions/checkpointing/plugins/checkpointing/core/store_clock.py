"""The store's clock: "now" as the store itself dates objects.

Ages that decide deletions (``expire_after_days``) compare an object's mtime in a listing with
"now"; both must come from the same clock, the store's, or a machine whose clock is off by days
would expire checkpoints early or keep them for ever.  :func:`now` writes an empty probe
(:func:`.layout.clock_probe_key`), reads its mtime back from a listing and deletes it: the same
way garbage collection reads its run record's mtime (:mod:`.gc_run`), without a run record
(which would make a concurrent collection stop).
"""

from __future__ import annotations

import secrets

from ..errors import CheckpointConfigError
from ..storage.base import Storage
from .layout import clock_probe_key


def now(storage: Storage) -> float:
    """The store's current time (seconds since the epoch), from a probe object's mtime.

    Raises
    ------
    CheckpointConfigError
        The store reports no modification times (ages cannot be judged there).
    StorageError
        The probe could not be written (e.g. read-only credentials).
    """
    key = clock_probe_key(secrets.token_hex(16))
    storage.put_bytes(key, b"")
    try:
        mtimes = [o.mtime for o in storage.list(key) if o.key == key]
    finally:
        storage.delete(key)
    if not mtimes or mtimes[0] is None:
        raise CheckpointConfigError(
            "%s does not report modification times, so the age of a checkpoint by the store's "
            "clock is unknown: expire_after_days is not supported on this store; use the "
            "keep_* rules." % storage.url
        )
    return float(mtimes[0])
