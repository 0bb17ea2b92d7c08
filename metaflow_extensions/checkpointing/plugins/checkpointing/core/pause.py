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
    """Answers "was a pause requested for this task or its run?", asking the store rarely."""

    def __init__(self, storage: Storage, scope: Scope, interval: Optional[float] = None):
        self._storage = storage
        self._keys = (
            run_key(scope.flow, scope.run),
            task_key(scope.flow, scope.run, scope.step, scope.task),
        )
        self._interval = interval
        self._checked = float("-inf")
        self._requested = False

    def requested(self) -> bool:
        if self._requested:
            return True
        now = time.monotonic()
        if now - self._checked < self._poll_interval():
            return False
        self._checked = now
        self._requested = any(self._storage.exists(k) for k in self._keys)
        return self._requested

    def _poll_interval(self) -> float:
        if self._interval is None:
            from ..common.settings import pause_poll_seconds

            self._interval = pause_poll_seconds()
        return self._interval
