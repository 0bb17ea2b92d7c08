"""Cooperative pause: a request object in the store, polled cheaply by running tasks.

``metaflow checkpoint pause Flow/run[/step/task]`` (or ``Checkpoint().pause(...)``) writes
``control/pause/<flow>/<run>/_run.json`` or ``control/pause/<flow>/<run>/<step>/<task>.json``
under the run's checkpoint root.  A task asks ``current.checkpoint.should_pause()`` at batch
boundaries; the store is looked at most every ``METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS``.
"""

from __future__ import annotations

import json
import time
from typing import Optional

from ..storage.base import Storage
from .layout import pause_run_key as run_key
from .layout import pause_task_key as task_key
from .scope import Scope


def request(storage: Storage, key: str, reason: Optional[str], by: Optional[str]) -> None:
    """Record a pause request (idempotent)."""
    body = {"requested_at": time.time(), "reason": reason or "", "by": by or ""}
    storage.put_bytes(key, json.dumps(body).encode("utf-8"))


def clear(storage: Storage, key: str) -> None:
    storage.delete(key)


class PausePoller:
    """Answers "was a pause requested for this task or its run?", asking the store rarely.

    Parameters
    ----------
    storage : Storage
        The store the task saves to (where ``metaflow checkpoint pause`` writes its request).
    scope : Scope
        The running task's scope: its run's and its own request are looked for.
    interval : float
        Seconds between two looks at the store (the task layer reads it from
        ``METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS``; core reads no settings).
    """

    def __init__(self, storage: Storage, scope: Scope, interval: float):
        self._storage = storage
        self._keys = (
            run_key(scope.flow, scope.run),
            task_key(scope.flow, scope.run, scope.step, scope.task),
        )
        self._interval = max(0.0, float(interval))
        self._checked = float("-inf")
        self._requested = False

    def requested(self) -> bool:
        """True once a request was seen (it stays true: a pause is not withdrawn mid-task)."""
        if self._requested:
            return True
        now = time.monotonic()
        if now - self._checked < self._interval:
            return False
        self._checked = now
        self._requested = any(self._storage.exists(k) for k in self._keys)
        return self._requested
