"""``METAFLOW_CHECKPOINT_RETRY_SECONDS`` (``RetryPolicy.max_seconds``) bounds when a new try of
one storage call may start, not how long a try already running takes (docs/configuration.md:
that is the per-try timeout's job)."""

from __future__ import annotations

import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

#: Many tries allowed: only the time bound can stop them.
POLICY = RetryPolicy(attempts=6, max_seconds=0.2, backoff=0.001, max_backoff=0.001)
SLOW = 0.5  # each try's duration, past max_seconds


class SlowStore(MemoryStorage):
    """Memory storage whose reads each take ``SLOW`` s, then fail transiently ``failures``
    times before answering."""

    def __init__(self, failures: int):
        super().__init__("memory://slow", retry=POLICY)
        self.failures = failures
        self.tries = 0

    def _get_bytes(self, key, start, length):
        self.tries += 1
        time.sleep(SLOW)
        if self.tries <= self.failures:
            raise ConnectionError("reset (try %d)" % self.tries)
        return super()._get_bytes(key, start, length)


def test_a_try_running_past_retry_seconds_completes():
    store = SlowStore(failures=0)
    MemoryStorage._put_bytes(store, "k", b"value")
    started = time.monotonic()
    assert store.get_bytes("k") == b"value"  # not cut at max_seconds
    assert store.tries == 1 and time.monotonic() - started >= SLOW


def test_no_new_try_starts_after_retry_seconds():
    store = SlowStore(failures=1)  # a second try would succeed
    MemoryStorage._put_bytes(store, "k", b"value")
    with pytest.raises(StorageError, match="still failing after 1 try"):
        store.get_bytes("k")
    assert store.tries == 1
