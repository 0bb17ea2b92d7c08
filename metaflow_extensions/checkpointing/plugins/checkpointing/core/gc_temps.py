"""GC of a local store's temp files: what a writer killed mid-write left behind.

A local store writes each object to ``.mfckpt-tmp-<8>`` beside its final name and renames it
(``storage/local.py``); a writer killed before the rename leaves the temp file, which no listing
shows, so no other GC step removes it.  GC removes those older than its grace period and at least
:data:`MIN_AGE` (even with ``grace_seconds=0``): a younger one may be a live writer's, whose
rename would then fail.
"""

from __future__ import annotations

import os

from ..storage.base import Storage
from ..storage.local import _TMP_PREFIX, LocalStorage
from .leases import DEFAULT_TTL_SECONDS
from .tempnames import is_temp_name

#: A temp file this recent is never removed: a writer untouched for this long (a writer
#: lease's default TTL) has lost its lease anyway.
MIN_AGE = DEFAULT_TTL_SECONDS


def stale_temps(storage: Storage, now: float, grace: float) -> list[str]:
    """Paths of the temp files of ``storage`` (a local store; others have none) last modified
    more than ``grace`` (and :data:`MIN_AGE`) seconds before ``now`` (the store's clock: the
    same filesystem's mtimes)."""
    if not isinstance(storage, LocalStorage):
        return []
    cutoff = now - max(grace, MIN_AGE)
    stale = []
    for directory, _dirs, files in os.walk(storage.root):
        for name in files:
            if not (name.startswith(_TMP_PREFIX) and is_temp_name(name)):
                continue
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    stale.append(path)
            except FileNotFoundError:
                pass  # renamed into place by its writer meanwhile
    return stale


def remove_temps(paths: list[str]) -> None:
    """Remove ``paths``; one already gone (renamed by its writer, or by another run) is fine."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
