"""The storage layer: bounded retries of transient errors, one translation of backend errors."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    StorageError,
    StorageNotFound,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import make_scope, options, sample_spec, snapshot, write_tree

FAST = RetryPolicy(attempts=3, max_seconds=2, backoff=0.001, max_backoff=0.001)


class Flaky(MemoryStorage):
    """Memory storage whose primitives raise ``exc`` for the first ``failures`` calls each."""

    def __init__(self, failures: int, exc: type = ConnectionError, retry: RetryPolicy = FAST):
        super().__init__("memory://flaky", retry=retry)
        self.failures = failures
        self.exc = exc
        self.calls: dict = {}

    def _maybe_fail(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.calls[op] <= self.failures:
            raise self.exc("%s broke (call %d)" % (op, self.calls[op]))

    def _put_bytes(self, key, data):
        self._maybe_fail("put")
        super()._put_bytes(key, data)

    def _get_bytes(self, key, start, length):
        self._maybe_fail("get")
        return super()._get_bytes(key, start, length)

    def _exists(self, key):
        self._maybe_fail("exists")
        return super()._exists(key)

    def _list(self, prefix):
        self._maybe_fail("list")
        return super()._list(prefix)

    def _delete(self, key):
        self._maybe_fail("delete")
        super()._delete(key)


def _seed(storage: MemoryStorage) -> None:
    MemoryStorage._put_bytes(storage, "some/key", b"value")


OPS = {
    "put": lambda s: s.put_bytes("some/key", b"value"),
    "get": lambda s: s.get_bytes("some/key"),
    "exists": lambda s: s.exists("some/key"),
    "list": lambda s: s.list("some/"),
    "delete": lambda s: s.delete("some/key"),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("exc", [ConnectionError, TimeoutError])
def test_transient_errors_are_retried_until_success(op, exc):
    """Two transient failures then success: the call succeeds after exactly three tries."""
    s = Flaky(failures=2, exc=exc)
    _seed(s)
    OPS[op](s)
    assert s.calls[op] == 3


def test_retried_get_returns_the_data():
    """A read that succeeds on its third try returns the stored bytes intact."""
    s = Flaky(failures=2)
    _seed(s)
    assert s.get_bytes("some/key") == b"value"


@pytest.mark.parametrize("op", sorted(OPS))
def test_persistent_transient_error_gives_up_with_storage_error(op):
    """A store that stays unavailable fails after the configured tries with a clear message."""
    s = Flaky(failures=10**6)
    _seed(s)
    with pytest.raises(StorageError) as err:
        OPS[op](s)
    assert s.calls[op] == 3
    msg = str(err.value)
    assert "memory://flaky" in msg
    assert "ConnectionError" in msg
    assert "3 tries" in msg
    assert isinstance(err.value.__cause__, ConnectionError)
    assert not isinstance(err.value, StorageNotFound)


def test_retry_stops_on_total_time_bound():
    """Retries stop when max_seconds has passed even if many attempts are allowed."""
    policy = RetryPolicy(attempts=10**6, max_seconds=0.2, backoff=0.02, max_backoff=0.02)
    s = Flaky(failures=10**9, retry=policy)
    with pytest.raises(StorageError):
        s.get_bytes("some/key")
    assert 2 <= s.calls["get"] < 100


@settings(max_examples=60, deadline=None)
@given(attempts=st.integers(1, 5), failures=st.integers(0, 6), op=st.sampled_from(sorted(OPS)))
def test_tries_are_counted_from_the_first_one(attempts, failures, op):
    """A call is tried at most ``attempts`` times in all, the first try included (made without
    the retry machinery): it succeeds iff the store recovers within them, and a give-up says
    how many tries it made."""
    policy = RetryPolicy(attempts=attempts, max_seconds=30, backoff=0, max_backoff=0)
    s = Flaky(failures=failures, retry=policy)
    _seed(s)
    if failures < attempts:
        OPS[op](s)
        assert s.calls[op] == failures + 1
        return
    with pytest.raises(StorageError) as err:
        OPS[op](s)
    assert s.calls[op] == attempts
    assert "after %d %s" % (attempts, "try" if attempts == 1 else "tries") in str(err.value)


class Timed(Flaky):
    """Flaky storage recording when each ``get`` try starts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.starts: list = []

    def _get_bytes(self, key, start, length):
        self.starts.append(time.monotonic())
        return super()._get_bytes(key, start, length)


def test_waits_between_tries_double_from_the_first_failure():
    """The wait after the first failed try is ``backoff``, then it doubles up to
    ``max_backoff``: the schedule of one policy from the first try on."""
    policy = RetryPolicy(attempts=5, max_seconds=30, backoff=0.05, max_backoff=0.15)
    s = Timed(failures=10**6, retry=policy)
    with pytest.raises(StorageError):
        s.get_bytes("some/key")
    gaps = [b - a for a, b in zip(s.starts, s.starts[1:])]
    assert len(gaps) == 4
    for gap, wait in zip(gaps, (0.05, 0.10, 0.15, 0.15)):
        assert wait <= gap < wait + 0.5, gaps


def test_time_bound_counts_from_the_first_try():
    """``max_seconds`` bounds the whole call: with a first wait longer than the bound there
    is exactly one retry (tenacity's clock, started after that wait, must not restart it)."""
    policy = RetryPolicy(attempts=10, max_seconds=0.1, backoff=0.3, max_backoff=0.3)
    s = Timed(failures=10**6, retry=policy)
    with pytest.raises(StorageError):
        s.get_bytes("some/key")
    assert len(s.starts) == 2


@pytest.mark.parametrize("exc", [RuntimeError, PermissionError, ValueError])
def test_permanent_errors_are_not_retried(exc):
    """A non-transient backend error surfaces at once as StorageError naming the URL."""
    s = Flaky(failures=10**6, exc=exc)
    with pytest.raises(StorageError) as err:
        s.put_bytes("some/key", b"v")
    assert s.calls["put"] == 1
    assert "memory://flaky/some/key" in str(err.value)
    assert exc.__name__ in str(err.value)


def test_missing_object_is_storage_not_found_without_retry():
    """A missing key raises StorageNotFound on the first try (not retried as transient)."""
    s = Flaky(failures=0)
    with pytest.raises(StorageNotFound, match="memory://flaky/no/such"):
        s.get_bytes("no/such")
    assert s.calls["get"] == 1


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a\\b", "a\x00"])
def test_invalid_keys_are_rejected_before_any_backend_call(key):
    """Keys that could escape the root never reach the backend."""
    s = Flaky(failures=0)
    with pytest.raises(StorageError, match="Invalid storage key"):
        s.put_bytes(key, b"v")
    assert s.calls == {}


class FlakyPerKey(MemoryStorage):
    """Every (operation, key) fails twice with ConnectionError, then works."""

    def __init__(self):
        super().__init__("memory://flaky", retry=FAST)
        self.calls: dict = {}
        self._guard = threading.Lock()

    def _maybe_fail(self, op: str, key: str) -> None:
        with self._guard:
            n = self.calls[(op, key)] = self.calls.get((op, key), 0) + 1
        if n <= 2:
            raise ConnectionError("%s %s broke" % (op, key))

    def _put_bytes(self, key, data):
        self._maybe_fail("put", key)
        super()._put_bytes(key, data)

    def _get_bytes(self, key, start, length):
        self._maybe_fail("get", key)
        return super()._get_bytes(key, start, length)

    def _exists(self, key):
        self._maybe_fail("exists", key)
        return super()._exists(key)

    def _list(self, prefix):
        self._maybe_fail("list", prefix)
        return super()._list(prefix)


def test_save_and_load_survive_a_flaky_store(tmp_path):
    """A checkpoint saves, lists and loads through a store failing twice on every call."""
    storage = FlakyPerKey()
    store = CheckpointStore(storage, options(workers=2))
    src = write_tree(tmp_path / "src", sample_spec())
    m = store.save(str(src), make_scope())
    assert [h.key for h in store.headers(make_scope().task_prefix())] == [m.key]
    store.load(store.read(m.key), str(tmp_path / "dest"))
    assert snapshot(tmp_path / "dest") == snapshot(src)
    assert all(n == 3 for n in storage.calls.values())
