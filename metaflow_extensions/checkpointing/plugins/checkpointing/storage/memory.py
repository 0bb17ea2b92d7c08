"""In-memory backend: a dict of bytes, for unit tests and fault injection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Optional

from .base import Buffer, ObjectInfo, Storage


class MemoryStorage(Storage):
    """A thread-safe in-process store.  Objects vanish with the instance."""

    TYPE = "memory"

    def __init__(self, url: str = "memory://checkpoints", **kwargs):
        super().__init__(url, **kwargs)
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def _put_bytes(self, key: str, data: Buffer) -> None:
        with self._lock:
            self._objects[key] = (bytes(data), time.time())

    def _get_bytes(self, key: str, start: int, length: Optional[int]) -> bytes:
        with self._lock:
            if key not in self._objects:
                raise FileNotFoundError(key)
            data = self._objects[key][0]
        end = None if length is None else start + length
        return data[start:end]

    def _exists(self, key: str) -> bool:
        with self._lock:
            return key in self._objects

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(k, v) for k, v in self._objects.items() if k.startswith(prefix)]
        for key, (data, mtime) in items:
            yield ObjectInfo(key, len(data), mtime)

    def _delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)
