"""What both transfer pipelines share: options, statistics, hashing and a bounded thread pool.

The pipelines themselves live in :mod:`.scan` (what a save reads), :mod:`.upload` (files ->
hashed, deduplicated blobs) and :mod:`.download` (blobs -> verified files).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from ..errors import CheckpointConfigError
from .codec import check_setting
from .idle_threads import IdleThreads

#: Called with a number of bytes each time that many are done (from worker threads).
Progress = Callable[[int], None]


def _no_progress(n: int) -> None:
    pass


class _Blake3:
    """BLAKE3-256: ``digest(buffer)`` is the hex digest of a buffer, ``digest.new()`` an
    incremental hasher of the same (``update(buffer)``, ``hexdigest()``), which lets a local
    store hash pieces as it copies them (:meth:`.Storage.ingest_range`)."""

    def __call__(self, data) -> str:
        # Imported on first use, not with the module: `import metaflow` reaches this module
        # in every task, also in a remote image without blake3 (task/deps.py names it).
        import blake3

        return blake3.blake3(data).hexdigest()

    def new(self):
        import blake3

        return blake3.blake3()


#: The content hash of every blob and recorded file digest.
digest = _Blake3()


@dataclass
class TransferOptions:
    """Knobs of both pipelines.

    Parameters
    ----------
    chunk_size : int
        Size of the chunks large files are split into, and the target size of packs.
    small_size : int
        Files smaller than this are packed together.
    workers : int
        Threads doing I/O, hashing and network calls.
    inflight : int
        Buffers alive at once (bounds memory).  Defaults to ``workers``.
    compression : str, optional
        ``"zstd"``: store each new blob zstd-compressed when that pays (:mod:`.codec`).
        Default None: plain, as every release before codecs.
    """

    chunk_size: int = 16 << 20
    small_size: int = 1 << 20
    workers: int = 8
    inflight: Optional[int] = None
    compression: Optional[str] = None

    def __post_init__(self) -> None:
        if self.compression is not None:
            self.compression = check_setting(self.compression)
        if self.chunk_size < 4096:
            raise CheckpointConfigError("chunk_size must be at least 4096 bytes.")
        self.small_size = max(0, min(self.small_size, self.chunk_size))
        self.workers = max(1, int(self.workers))
        self.inflight = max(1, int(self.inflight or self.workers))

    def with_compression(self, codec: Optional[str]) -> TransferOptions:
        """These options with ``compression=codec`` (a ``@checkpoint(compression=)``)."""
        return replace(self, compression=codec) if codec != self.compression else self


@dataclass
class SaveStats:
    """What one save did; stored in the manifest."""

    files: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    bytes_deduplicated: int = 0
    blobs_uploaded: int = 0
    blobs_deduplicated: int = 0
    #: Bytes written to the store for the new blobs: ``bytes_uploaded`` after compression.
    bytes_stored: int = 0
    seconds: dict = field(default_factory=dict)
    #: Blobs this save stored or saw stored (not stored in the manifest).  Blobs it trusted from
    #: the process-wide known set are checked again before the commit (see ``commit.save``).
    confirmed: set = field(default_factory=set)

    def to_json(self) -> dict:
        return {
            "files": self.files,
            "bytes_read": self.bytes_read,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_deduplicated": self.bytes_deduplicated,
            "blobs_uploaded": self.blobs_uploaded,
            "blobs_deduplicated": self.blobs_deduplicated,
            # Only when it differs (compression): manifests of plain saves are unchanged.
            **(
                {"bytes_stored": self.bytes_stored}
                if self.bytes_stored != self.bytes_uploaded
                else {}
            ),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


# ------------------------------------------------------------------------------ bounded runner
#: The threads transfers run their jobs in, kept between transfers (:mod:`.idle_threads`).
_threads = IdleThreads("mfckpt", "mfckpt-idle")


def _run_bounded(jobs: Iterable[Callable[[], None]], workers: int, inflight: int) -> None:
    """Run callables on up to ``min(workers, inflight)`` threads at once; return when all ran.

    Jobs are pulled lazily from ``jobs``, one at a time by each thread as it becomes free (so
    no more than that many are started and unfinished: ``inflight`` bounds the buffers alive).
    After the first failure nothing new is started, the running ones finish, and the first
    error is raised.  If the caller is interrupted while it waits (``KeyboardInterrupt``),
    nothing new is started either, and the interrupt is raised once the running jobs end.
    A single job runs in the calling thread: starting a pool thread and handing the job over
    was a fifth of a small save.  The threads are kept for the next call: a new pool per call
    cost a load of 4 blobs ~0.45 ms, of 64 blobs ~3 ms.
    """
    pending = iter(jobs)
    first = next(pending, None)
    if first is None:
        return
    second = next(pending, None)
    if second is None:
        first()
        return
    queue = itertools.chain((first, second), pending)
    limit = max(1, min(workers, inflight))
    lock = threading.Lock()
    finished = threading.Event()
    errors: list[BaseException] = []
    # Runners are started as jobs turn up (each one that pulls a job starts the next, up to
    # ``limit``): a transfer of 2 blobs wakes 3 threads, not 8.
    state = {"live": 1, "started": 1, "stop": False}
    began = threading.Event()  # the first runner is running (it may not: see below)

    def runner() -> None:
        began.set()
        try:
            while True:
                with lock:
                    job = None if state["stop"] else next(queue, None)
                    more = job is not None and state["started"] < limit
                    if more:
                        state["started"] += 1
                        state["live"] += 1
                if job is None:
                    return
                if more:
                    try:
                        _threads.start(runner)
                    except RuntimeError:  # no thread to be had (a limit): this one goes on
                        with lock:
                            state["live"] -= 1
                job()
                job = None  # its buffers are freed now, not when the next one is pulled
        except BaseException as exc:  # a job, or the job list, failed: raised in the caller
            job = None
            with lock:
                errors.append(exc)
                state["stop"] = True
        finally:
            with lock:
                state["live"] -= 1
                last = state["live"] == 0
            if last:
                finished.set()

    try:
        try:
            _threads.start(runner)
        except RuntimeError:  # no thread to be had at all: the caller runs every job
            runner()
        finished.wait()
    except BaseException:  # Ctrl-C, or a signal handler raising, while the caller waits
        with lock:
            state["stop"] = True
        # The jobs running end before the caller's cleanup runs (which removes what they
        # write); a second interrupt stops this wait too.  Interrupted while the first runner
        # was being started, it may never run: once told to stop, a runner starting late runs
        # no job, so only one that began needs waiting for.
        if began.wait(1.0):
            finished.wait()
        raise
    if errors:
        raise errors[0]


class _Timed:
    """:func:`timed`'s context manager (a class of its own: not built anew at every call)."""

    __slots__ = ("stats", "phase", "t")

    def __init__(self, stats: SaveStats, phase: str):
        self.stats, self.phase = stats, phase

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc) -> None:
        seconds = self.stats.seconds
        seconds[self.phase] = seconds.get(self.phase, 0.0) + time.perf_counter() - self.t


def timed(stats: SaveStats, phase: str) -> _Timed:
    """Context manager adding the elapsed seconds of a block to ``stats.seconds[phase]``."""
    return _Timed(stats, phase)
