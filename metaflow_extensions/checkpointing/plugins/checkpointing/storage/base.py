"""The storage protocol every checkpoint backend implements.

A backend is rooted at one URL and addresses objects by ``/``-separated keys relative to that
root.  It provides five primitives (``_put_bytes``, ``_get_bytes``, ``_exists``, ``_list``,
``_delete``) and says which of its exceptions are transient (``_classify``).  The public methods
here add what every backend needs exactly once: error translation into :mod:`..errors`, bounded
retries with tenacity (count *and* total time), and key validation.

Guarantees a backend must give (checked by the conformance suite in ``tests/storage``):

* ``put_bytes`` is atomic: a reader sees the whole new object or nothing (or the old one);
* ``get_bytes`` of a missing key raises :class:`StorageNotFound`;
* ``list(prefix)`` is recursive and matches raw string prefixes, like S3, and fails closed:
  a part of the store it cannot read (permissions, I/O error, a truncated page) raises
  :class:`StorageError` instead of being left out (a missing prefix is an empty listing);
* ``delete`` of a missing key is not an error.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar, Union

from ..errors import MetaflowException, StorageError, StorageNotFound

T = TypeVar("T")
Buffer = Union[bytes, bytearray, memoryview]

#: Appended to the error of a listing that could not read part of the store.  Listings fail
#: closed: what a listing omits looks absent to load policies, retention and garbage collection.
LIST_HINT = (
    "A listing never skips what it cannot read (checkpoints there would look absent to "
    "retries, retention and garbage collection): make that location readable by this user, "
    "or repair the store, and retry."
)

TRANSIENT = "transient"
NOT_FOUND = "not_found"
PERMANENT = "permanent"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the backend root), size and modification time."""

    key: str
    size: int
    mtime: Optional[float] = None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retrying transient storage errors.

    Parameters
    ----------
    attempts : int
        Total tries of one call, the first included.
    max_seconds : float
        Give up once this much time has passed since the first try.
    backoff : float
        First wait between tries in seconds; doubles up to ``max_backoff``.
    max_backoff : float
        Longest single wait.
    """

    attempts: int = 6
    max_seconds: float = 120.0
    backoff: float = 0.2
    max_backoff: float = 10.0


class _Transient(Exception):
    """Internal marker: the wrapped backend error may succeed on a later try."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def validate_key(key: str) -> str:
    """Reject keys that could escape the root or that backends disagree on."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(
            "Invalid storage key %r: keys are non-empty relative '/' paths." % key, key=key
        )
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(
            "Invalid storage key %r: empty, '.' or '..' path components." % key, key=key
        )
    return key


class Storage(abc.ABC):
    """Base class of every backend: public API with retries and error translation.

    Parameters
    ----------
    url : str
        The root of this store (a local path or a URL such as ``s3://bucket/prefix``).
    retry : RetryPolicy, optional
        Bounds for retrying transient errors.
    """

    #: Short backend name used in messages and in the conformance suite.
    TYPE = "abstract"

    def __init__(self, url: str, retry: Optional[RetryPolicy] = None):
        self.url = url.rstrip("/") if "://" in url else url
        self.retry = retry or RetryPolicy()

    # ------------------------------------------------------------------ primitives (backends)
    @abc.abstractmethod
    def _put_bytes(self, key: str, data: Buffer) -> None: ...

    @abc.abstractmethod
    def _get_bytes(self, key: str, start: int, length: Optional[int]) -> bytes: ...

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    def _classify(self, exc: BaseException) -> str:
        """Return TRANSIENT, NOT_FOUND or PERMANENT for a backend exception."""
        if isinstance(exc, FileNotFoundError):
            return NOT_FOUND
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return TRANSIENT
        return PERMANENT

    # ------------------------------------------------------------------ derived, overridable
    def _put_new(self, key: str, data: Buffer) -> None:
        self._put_bytes(key, data)  # object stores: a put is atomic anyway

    def _put_file(self, key: str, local_path: str) -> None:
        with open(local_path, "rb") as f:
            self._put_bytes(key, f.read())

    def _get_file(self, key: str, local_path: str) -> None:
        data = self._get_bytes(key, 0, None)
        with open(local_path, "wb") as f:
            f.write(data)

    # ------------------------------------------------------------------ optional fast paths
    def local_path(self, key: str) -> Optional[str]:
        """Filesystem path of ``key`` if this backend stores objects as plain local files (lets
        loads copy in-kernel), else None."""
        return None

    def ingest_range(
        self,
        src: str,
        offset: int,
        length: int,
        digest: Callable[[Buffer], str],
        key_for: Callable[[str], str],
    ) -> Optional[tuple[str, bool]]:
        """Store bytes ``[offset, offset+length)`` of the local file ``src`` under
        ``key_for(digest(stored bytes))`` without passing them through Python, if the backend can.

        Returns ``(digest, newly_stored)``, or None when unsupported (callers then read the bytes
        and use :meth:`put_bytes`).  The digest is computed over the bytes as stored, so a file
        changing meanwhile can never leave a blob that does not match its key.  If ``digest``
        has a ``new()`` method returning an incremental hasher of the same hash
        (:class:`.oscopy.Hasher`), a backend may hash the bytes piece by piece as it writes
        them.
        """
        return None

    def ingest_filled(
        self,
        length: int,
        fill: Callable[[int], Optional[str]],
        digest: Callable[[Buffer], str],
        key_for: Callable[[str], str],
    ) -> Optional[tuple[str, bool]]:
        """Like :meth:`ingest_range` for ``length`` bytes that ``fill(fd)`` writes at offset 0
        of a new file of the store (e.g. many small files copied in the kernel into one pack).
        ``fill`` returns None, and the bytes are then hashed as stored with ``digest``, or the
        digest of exactly the bytes it wrote, taken as it wrote them (not read again).

        Returns ``(digest, newly_stored)``, or None when unsupported, also when ``fill`` raises
        an ``OSError`` whose errno is in :data:`.oscopy.UNSUPPORTED_COPY` or the staged file
        cannot be mapped.  Raises what ``fill`` raises, and ``OSError`` when writing the store
        fails (callers name the store: :meth:`.BlobWriter.put_filled`).
        """
        return None

    # ------------------------------------------------------------------ public API
    def full_url(self, key: str) -> str:
        """The URL or path of ``key`` as a user would type it."""
        return "%s/%s" % (self.url, key)

    def put_bytes(self, key: str, data: Buffer) -> None:
        """Store ``data`` under ``key`` atomically (replacing any previous object)."""
        validate_key(key)
        self._call("put", key, lambda: self._put_bytes(key, data))

    def put_new(self, key: str, data: Buffer) -> None:
        """Store ``data`` under ``key``, a key no object has, possibly not atomically.

        A crash during the write may leave ``key`` holding part of ``data`` (a local store
        writes it in place, without the temp name and rename of :meth:`put_bytes`, which cost
        half of a small put).  Only for objects whose readers skip a body that does not parse
        (the task's metrics log).

        Raises
        ------
        StorageError
            ``key`` exists, or the write failed (a local store removes what it wrote).
        """
        validate_key(key)
        self._call("put", key, lambda: self._put_new(key, data))

    def put_file(self, key: str, local_path: str) -> None:
        """Upload the local file ``local_path`` to ``key`` atomically."""
        validate_key(key)
        if not os.path.isfile(local_path):
            # Else backends report the missing *source* as a missing key (StorageNotFound).
            raise StorageError(
                "put_file of %s: %r is not a file." % (self.full_url(key), local_path),
                key=key,
                path=local_path,
                url=self.full_url(key),
                reason="not a file",
            )
        self._call("put", key, lambda: self._put_file(key, local_path))

    def get_bytes(self, key: str, start: int = 0, length: Optional[int] = None) -> bytes:
        """Read an object, or ``length`` bytes of it from ``start``.

        Raises
        ------
        StorageNotFound
            If ``key`` does not exist.
        """
        validate_key(key)
        return self._call("get", key, lambda: self._get_bytes(key, start, length))

    def get_file(self, key: str, local_path: str) -> None:
        """Download ``key`` to the local file ``local_path``."""
        validate_key(key)
        self._call("get", key, lambda: self._get_file(key, local_path))

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        validate_key(key)
        return self._call("stat", key, lambda: self._exists(key))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive), in no particular order."""
        if prefix:
            validate_key(prefix.rstrip("/") or "x")
        return self._call("list", prefix or "<root>", lambda: list(self._list(prefix)))

    def has_objects(self, prefix: str = "") -> bool:
        """Whether any object's key starts with ``prefix``.  Reads only the first entry of the
        listing (one request on S3), so it costs the same on a store of any size; a prefix
        that does not exist is False."""
        if prefix:
            validate_key(prefix.rstrip("/") or "x")
        first = lambda: next(iter(self._list(prefix)), None) is not None  # noqa: E731
        try:
            return self._call("list", prefix or "<root>", first)
        except StorageNotFound:
            return False

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        validate_key(key)
        self._call("delete", key, lambda: self._delete(key))

    def delete_many(self, keys: list[str], workers: int = 16) -> None:
        """Delete every key (missing keys are not an error), in parallel or in batches."""
        for key in keys:
            validate_key(key)
        for start in range(0, len(keys), self.DELETE_BATCH):
            batch = keys[start : start + self.DELETE_BATCH]
            self._call("delete", batch[0], lambda b=batch: self._delete_batch(b, workers))

    #: Keys per :meth:`_delete_batch` call (S3 deletes up to 1,000 keys per request).
    DELETE_BATCH = 1000

    def _delete_batch(self, keys: list[str], workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(workers, len(keys)))) as pool:
            list(pool.map(self._delete, keys))

    # ------------------------------------------------------------------ retries + translation
    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        # Every error leaving here names the object: ``key`` (as the backend addresses it; a
        # listing's prefix, or "<root>") and ``url`` (as a user would type it), made only then.
        tries = [0]

        def attempt() -> T:
            tries[0] += 1
            try:
                return fn()
            except StorageError as exc:  # raised by the backend itself: add what it left out
                exc.key = key if exc.key is None else exc.key
                exc.url = self.full_url(key) if exc.url is None else exc.url
                raise
            except MetaflowException:
                # Not the store's: raised by a signal handler in the middle of the call
                # (Metaflow's @timeout, ours on SIGTERM).  A StorageError in its place would be
                # caught by best-effort callers, and the timeout or stop lost.
                raise
            except Exception as exc:  # translated right here, in one place
                url = self.full_url(key)
                kind = self._classify(exc)
                cause = "%s: %s" % (type(exc).__name__, exc)
                if kind == NOT_FOUND:
                    # A write finds "nothing" only when a parent is missing or is a file: name
                    # the OS error, which says which (NotADirectoryError, ...).
                    message = (
                        "%s of %s failed: %s" % (op, url, cause)
                        if op == "put"
                        else "%s: no object at %s" % (op, url)
                    )
                    raise StorageNotFound(message, key=key, url=url, reason=cause) from exc
                if kind == TRANSIENT:
                    raise _Transient(exc) from exc
                raise StorageError(
                    "%s of %s failed: %s%s"
                    % (op, url, cause, ". " + LIST_HINT if op == "list" else ""),
                    key=key,
                    url=url,
                    reason=cause,
                ) from exc

        started = time.monotonic()
        try:
            # Nearly every call succeeds at its first try: made without the retry machinery,
            # whose set-up and bookkeeping cost 17 us a call (a 4 KiB save makes two calls; a
            # listing of 100,000 checkpoints, 100,000).
            return attempt()
        except _Transient as exc:
            first = exc
        try:
            return self._retry_after(first, attempt, started)
        except _Transient as exc:
            url = self.full_url(key)
            cause = "%s: %s" % (type(exc.original).__name__, exc.original)
            # What happened (tries made, time spent) and the limits, said apart: a call that
            # gave up at the attempt limit after 0.6 s must not read as "10 s".
            raise StorageError(
                "%s of %s still failing after %d %s in %.1f s (%s); the limits are %d tries "
                "and %g s. The store at %s looks unavailable; check connectivity and "
                "credentials, or raise METAFLOW_CHECKPOINT_RETRY_ATTEMPTS / "
                "METAFLOW_CHECKPOINT_RETRY_SECONDS."
                % (
                    op,
                    url,
                    tries[0],
                    "try" if tries[0] == 1 else "tries",
                    time.monotonic() - started,
                    cause,
                    self.retry.attempts,
                    self.retry.max_seconds,
                    self.url,
                ),
                key=key,
                url=url,
                reason=cause,
            ) from exc.original

    def _retry_after(self, first: _Transient, attempt: Callable[[], T], started: float) -> T:
        """The tries left after ``first``, the first try's transient failure, under
        :attr:`retry` counted from ``started`` (the first try): the waits and bounds are those
        of one :class:`RetryPolicy` from the first try on.  Raises ``_Transient`` once they are
        spent."""
        policy = self.retry
        if policy.attempts <= 1 or time.monotonic() - started >= policy.max_seconds:
            raise first
        # Imported here, not at module level: `import metaflow` imports this module (through the
        # decorator) in every task, also where tenacity is not installed (see task/deps.py).
        import tenacity

        time.sleep(min(policy.backoff, policy.max_backoff))  # the wait after the first try
        left = max(0.0, policy.max_seconds - (time.monotonic() - started))
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            stop=tenacity.stop_after_attempt(policy.attempts - 1) | tenacity.stop_after_delay(left),
            # Tenacity's n-th try here is the policy's (n+1)-th: its wait doubles from 2x backoff.
            wait=tenacity.wait_exponential(multiplier=2 * policy.backoff, max=policy.max_backoff),
            reraise=True,
        )
        return retrying(attempt)


def join_key(*parts: str) -> str:
    """Join key components with '/', ignoring empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def default_workers() -> int:
    """Transfer concurrency that scales with the machine: 4 per core, between 4 and 64."""
    return max(4, min(64, 4 * (os.cpu_count() or 1)))
