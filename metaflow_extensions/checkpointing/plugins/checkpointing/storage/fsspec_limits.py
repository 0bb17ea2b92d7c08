"""The bound on each try of an Azure or GCS request, and which of their errors are transient.

The SDKs' timeouts apply per socket read: a link that trickles a byte now and then would hold a
call for ever.  So each try also has a bound on the whole call, scaled by the bytes it moves and
by the transfers this process has in flight at once (they share one link): see :func:`bounded`.

No byte-level "stall" rule is used: neither SDK path lets the bytes of one call be observed as
they arrive (aiohttp reports a body once it is whole, gcsfs reads whole bodies, the Azure SDK's
progress hook fires per multi-MiB chunk), and a trickle of one byte every 0.2 s is progress.

An upload's try has no SDK per-read timeout (:data:`uploading`): its body is handed to the socket
at once, and the SDKs start the response's read timer while the buffered part still drains (up
to the socket buffers, MiBs), so a slow but steady upload was cut at ``timeout`` instead of by
the bound below.  The errors say which limit fired: the whole-try cut, or a socket's own timeout
(connecting, or waiting for an answer to a get or a small request).
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, Callable, TypeVar

from .base import NOT_FOUND, PERMANENT, TRANSIENT

T = TypeVar("T")

# errno values that usually clear up on their own (network filesystems, busy servers).
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EINTR,
        errno.ESTALE,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)
# Connection-level exceptions of the HTTP stacks under fsspec backends (aiohttp for gcsfs,
# azure-core for adlfs, requests/google-auth for gcsfs' credentials), matched by name anywhere in
# the exception's class hierarchy (so their subclasses, e.g. azure-core's
# ServiceResponseTimeoutError, are too) and none of them has to be imported.
_TRANSIENT_NAMES = frozenset(
    {
        # aiohttp
        "ClientConnectionError",  # ClientOSError, ClientConnectorError, ServerDisconnectedError
        "ClientPayloadError",
        "ServerTimeoutError",
        # azure-core
        "ServiceRequestError",  # ServiceRequestTimeoutError
        "ServiceResponseError",  # ServiceResponseTimeoutError
        # http.client / urllib3 / requests / google-auth
        "IncompleteRead",
        "ProtocolError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "NewConnectionError",
        "ChunkedEncodingError",
        "ConnectionError",  # requests.ConnectionError is not the builtin one
        "Timeout",  # requests.Timeout: ReadTimeout, ConnectTimeout
        "TransportError",  # google.auth.exceptions.TransportError
    }
)

#: Slowest share of the link (bytes/s) a transfer may get before its try is cut.  Each try of a
#: request moving n bytes may take ``timeout`` seconds plus the time n bytes take at MIN_RATE
#: divided evenly among the bounded calls this process has in flight (see :func:`bounded`).
MIN_RATE = 64 << 10
#: Bytes assumed for requests with small answers (existence, object info).
SMALL = 16 << 10
#: How often a bounded call looks at the clock and the count of calls in flight, seconds.
_TICK = 0.1
#: How long a cut try is given to finish its cancellation before the TimeoutError is raised.
_CLEANUP = 5.0

#: True in the task of an upload's try: the clients of :mod:`.fsspec_clients` then give its
#: requests no per-read timeout, so the whole-try bound is the one that applies to them.
uploading: ContextVar[bool] = ContextVar("checkpoint_uploading", default=False)

_lock = threading.Lock()
_in_flight = 0


def in_flight() -> int:
    """How many bounded calls this process has running now."""
    return _in_flight


def _enter() -> None:
    global _in_flight
    with _lock:
        _in_flight += 1


def _leave() -> None:
    global _in_flight
    with _lock:
        _in_flight -= 1


async def _watched(
    start: Callable[[], Awaitable[T]], timeout: float, nbytes: int, rate: float
) -> T:
    """Run ``start()``'s coroutine on fsspec's loop until it ends or its allowance runs out.

    The allowance: after the first ``timeout`` seconds, the try may go on as long as the bytes a
    ``rate`` link shared evenly among the bounded calls in flight (counted every tick, so calls
    starting or ending later change it) would not yet have moved ``nbytes``.  Alone on the link
    this is ``timeout + nbytes / rate``; beside 7 others, 8 times the transfer part.
    """
    _enter()
    task = asyncio.ensure_future(start())
    try:
        began = last = time.monotonic()
        share = 0.0  # bytes an evenly shared MIN_RATE link would have given this call so far
        while True:
            done, _ = await asyncio.wait({task}, timeout=_TICK)
            if done:
                return _result(task, timeout, time.monotonic() - began)
            now = time.monotonic()
            if now - began > timeout:
                share += (now - max(last, began + timeout)) * rate / max(in_flight(), 1)
            last = now
            if share > nbytes:
                break
        elapsed, sharing = now - began, in_flight()
    finally:
        _leave()
        if not task.done():
            task.cancel()
            # The cut try is cancelled, but its cleanup (closing the connection, a partly
            # written temp file of get_file) may outlast this wait, and the store's next try
            # may then start while it still runs: nothing may rely on "the try is dead when
            # TimeoutError is raised".  Nothing does: tries of get_file never share a temp
            # name, and a retried put writes the same bytes to the same key.
            await asyncio.wait({task}, timeout=_CLEANUP)
    raise TryCut(
        "no complete answer within %.1f s: cut by the whole-try bound (the timeout, %g s, plus "
        "%d bytes at %d KiB/s shared by the transfers in flight, %d when cut)"
        % (elapsed, timeout, nbytes, int(rate) >> 10, sharing)
    )


class TryCut(TimeoutError):
    """A try cut by the whole-try bound (:func:`_watched`)."""


class SocketTimeout(TimeoutError):
    """A try ended by an SDK's per-socket timeout (connect, or no byte for ``timeout`` s)."""


def _is_sdk_timeout(exc: BaseException) -> bool:
    """aiohttp's ServerTimeoutError family (an asyncio.TimeoutError) and azure-core's
    Service{Request,Response}TimeoutError: a socket's connect or read timed out."""
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, TimeoutError) or bool(
        names & {"ServiceRequestTimeoutError", "ServiceResponseTimeoutError"}
    )


def _result(task: asyncio.Future, timeout: float, elapsed: float) -> Any:
    """``task``'s result; an SDK's socket timeout is raised as a :class:`SocketTimeout` that
    says so, and how far into the try (not as the whole-try bound, nor with an empty text)."""
    try:
        return task.result()
    except TryCut:
        raise
    except Exception as exc:
        if not _is_sdk_timeout(exc):
            raise
        raise SocketTimeout(
            "a socket connect or read waited more than the timeout, %g s (the SDK's per-socket "
            "timeout, not the whole-try bound), %.1f s into the try (%s: %s)"
            % (timeout, elapsed, type(exc).__name__, str(exc) or repr(exc))
        ) from exc


def bounded(
    fs: Any,
    method: str,
    *args: Any,
    timeout: float,
    nbytes: int,
    upload: bool = False,
    **kwargs: Any,
) -> Any:
    """``fs.<method>(*args, **kwargs)`` with the whole try bounded (see :func:`_watched`).

    Parameters
    ----------
    fs : fsspec.asyn.AsyncFileSystem
        adlfs or gcsfs: ``fs._<method>`` is the coroutine run on ``fs.loop``.
    method : str
        The public name, e.g. ``"cat_file"``.
    timeout : float
        Seconds every try is given before its bytes count (the store's timeout).
    nbytes : int
        Bytes the call moves (:data:`SMALL` for small answers).
    upload : bool
        An upload: its requests get no SDK per-read timeout (:data:`uploading`).

    Raises
    ------
    TryCut
        When the allowance ran out; the try was cancelled. Transient: retried by the store.
    SocketTimeout
        When an SDK's per-socket timeout fired first. Transient too.
    """
    from fsspec.asyn import sync
    from fsspec.exceptions import FSTimeoutError

    call: Callable[..., Awaitable[Any]] = getattr(fs, "_" + method)

    async def start() -> Any:
        # Set inside the try's own task (a copy of the context): no other call sees it.
        uploading.set(upload)
        return await call(*args, **kwargs)

    try:
        return sync(fs.loop, _watched, start, timeout, nbytes, MIN_RATE)
    except FSTimeoutError as exc:
        err = unwrap(exc)
        raise err from err.__cause__


def unbounded(fs: Any, method: str, *args: Any) -> Any:
    """``fs.<method>(*args)`` bounded by the SDK's per-socket timeouts only (a whole object of
    unknown size), their timeout said as such (fsspec's own error for it has no text)."""
    from fsspec.exceptions import FSTimeoutError

    try:
        return getattr(fs, method)(*args)
    except Exception as exc:
        if not isinstance(exc, FSTimeoutError) and not _is_sdk_timeout(exc):
            raise
        err = unwrap(exc)
        raise err from err.__cause__


def unwrap(exc: BaseException) -> TimeoutError:
    """The error behind fsspec's ``FSTimeoutError`` (``sync()`` raises every TimeoutError of
    the coroutine, ours or aiohttp's per-read one, as a bare one whose text is empty), or an
    SDK's own socket timeout, as a :class:`SocketTimeout` that says so."""
    from fsspec.exceptions import FSTimeoutError

    cause = exc.__cause__ if isinstance(exc, FSTimeoutError) else exc
    if isinstance(cause, (TryCut, SocketTimeout)):
        return cause
    err = SocketTimeout(
        "a socket connect or read timed out (the SDK's per-socket timeout) (%s: %s)"
        % (type(cause or exc).__name__, str(cause or exc) or "no text")
    )
    err.__cause__ = cause
    return err


def wraps_transient(exc: BaseException) -> bool:
    """Whether an error without an HTTP status wraps a connection-level one: azure-core raises
    a body cut mid-transfer (aiohttp's ClientPayloadError/ContentLengthError) as a bare
    ``HttpResponseError`` with the cut as its ``inner_exception``/cause, where gcsfs lets the
    aiohttp error itself through (and it is retried)."""
    seen: set = set()
    todo = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen or len(seen) > 8:
            continue
        seen.add(id(err))
        if err is not exc and any(c.__name__ in _TRANSIENT_NAMES for c in type(err).__mro__):
            return True
        for attr in ("inner_exception", "exc_value", "__cause__", "__context__"):
            inner = getattr(err, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return False


def classify(exc: BaseException) -> str:
    """NOT_FOUND, TRANSIENT (worth another try) or PERMANENT, for an error of an fsspec
    backend: connection-level errors of their HTTP stacks, throttling and 5xx are transient."""
    if isinstance(exc, FileNotFoundError):
        return NOT_FOUND
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TRANSIENT
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return TRANSIENT
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return TRANSIENT
    # HTTP errors of gcsfs/adlfs carry a status: throttling and 5xx are worth a retry.
    status = (
        getattr(exc, "code", None)
        or getattr(exc, "status", None)
        or getattr(exc, "status_code", None)
    )
    if isinstance(status, int) and (status in (408, 429) or 500 <= status < 600):
        return TRANSIENT
    if status is None and wraps_transient(exc):
        return TRANSIENT
    return PERMANENT
