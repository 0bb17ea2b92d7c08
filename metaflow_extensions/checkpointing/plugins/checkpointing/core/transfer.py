"""Moving bytes: files -> hashed, deduplicated blobs (save) and blobs -> verified files (load).

Save reads every byte exactly once: each read buffer is hashed (BLAKE3) and, unless a blob with
that hash is already stored, uploaded from the same buffer.  Large files are split into fixed-size
chunks; files smaller than ``small_size`` are concatenated into *packs* of up to ``chunk_size``
bytes so that many tiny files cost a few requests, not one each.  Work runs on a thread pool
(hashing, file I/O and network calls release the GIL) with at most ``inflight`` buffers alive,
so memory stays bounded by ``inflight * (chunk_size + small_size)`` whatever the checkpoint size.

Load fetches each blob once, verifies its hash (fetching again once on a mismatch: a flip in
transit is not corruption at rest), writes its slices into temp files beside their final
names, and renames every file into place only when all of them are complete.
"""

from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import blake3

from ..errors import (
    CheckpointConfigError,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    StorageError,
    StorageNotFound,
)
from ..storage.base import Storage
from ..storage.local import UNSUPPORTED_COPY, copy_range, map_readonly
from .manifest import ChunkRef, FileEntry, Manifest, safe_relpath
from .scope import blob_key

_TMP_SUFFIX = ".mfckpt-part-"


#: Called with a number of bytes each time that many are done (from worker threads).
Progress = Callable[[int], None]


def _no_progress(n: int) -> None:
    pass


def digest(data) -> str:
    """BLAKE3-256 hex digest of a buffer."""
    return blake3.blake3(data).hexdigest()


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
    """

    chunk_size: int = 16 << 20
    small_size: int = 1 << 20
    workers: int = 8
    inflight: Optional[int] = None

    def __post_init__(self) -> None:
        if self.chunk_size < 4096:
            raise CheckpointConfigError("chunk_size must be at least 4096 bytes.")
        self.small_size = max(0, min(self.small_size, self.chunk_size))
        self.workers = max(1, int(self.workers))
        self.inflight = max(1, int(self.inflight or self.workers))


@dataclass
class SaveStats:
    """What one save did; stored in the manifest."""

    files: int = 0
    bytes_read: int = 0
    bytes_uploaded: int = 0
    bytes_deduplicated: int = 0
    blobs_uploaded: int = 0
    blobs_deduplicated: int = 0
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
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


@dataclass
class _File:
    rel: str
    abs: str
    size: int
    mode: int
    # What identifies unchanged content for the stat cache (see StatCache).
    fingerprint: tuple = ()


def _fingerprint(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# ---------------------------------------------------------------------------------------- scan
def scan(src: str) -> tuple[list[_File], list[str], str]:
    """List the regular files and empty directories of ``src`` (a file or a directory).

    Symlinks to files are saved as the file they point to; symlinked directories are followed
    once (a cycle is skipped).  Returns (files, empty dirs, "file" | "dir").
    """
    if not os.path.exists(src):
        raise CheckpointConfigError(
            "Cannot save %r: no such file or directory. Pass an existing path, or write your "
            "files into current.checkpoint.directory and call save() without a path." % src
        )
    if os.path.isfile(src):
        st = os.stat(src)
        entry = _File(
            os.path.basename(src), src, st.st_size, stat.S_IMODE(st.st_mode), _fingerprint(st)
        )
        return [entry], [], "file"
    if not os.path.isdir(src):
        raise CheckpointConfigError("Cannot save %r: not a regular file or directory." % src)
    files: list[_File] = []
    empty: list[str] = []
    seen = {os.path.realpath(src)}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        regular = 0
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # dangling symlink or deleted while scanning
            if not stat.S_ISREG(st.st_mode):
                continue
            regular += 1
            files.append(
                _File(rel_dir + name, path, st.st_size, stat.S_IMODE(st.st_mode), _fingerprint(st))
            )
        if rel_dir and not regular and not dirnames:
            empty.append(rel_dir.rstrip("/"))
    files.sort(key=lambda f: f.rel)
    return files, sorted(empty), "dir"


# ------------------------------------------------------------------------------ bounded runner
def _run_bounded(jobs: Iterable[Callable[[], None]], workers: int, inflight: int) -> None:
    """Run callables on a thread pool with at most ``inflight`` submitted and unfinished.

    Jobs are pulled lazily from ``jobs``; after the first failure nothing new is started, the
    running ones finish, and the first error is raised.
    """
    slots = threading.Semaphore(inflight)
    failed = threading.Event()
    futures: list[Future] = []

    def done(fut: Future) -> None:
        if fut.exception() is not None:
            failed.set()
        slots.release()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfckpt") as pool:
        for job in jobs:
            slots.acquire()
            if failed.is_set():
                break
            fut = pool.submit(job)
            futures.append(fut)
            fut.add_done_callback(done)
    for fut in futures:
        if fut.exception() is not None:
            raise fut.exception()


class _BufferPool:
    """Reusable read buffers: allocating and page-faulting a fresh 16 MiB per chunk is slow."""

    def __init__(self, size: int):
        self._size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self._size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)


def _read_into(path: str, offset: int, view: memoryview) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise CheckpointConfigError(
                    "%s shrank while it was being saved; do not modify files during save()." % path
                )
            got += n
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------- save
class StatCache:
    """Chunk lists of large files this process saved, keyed by path and stat fingerprint.

    A re-save of an unchanged large file (same device, inode, size, mtime and ctime) reuses the
    chunk list instead of reading and hashing the file again, as rsync and restic do.  ctime
    cannot be set by user code, so ``touch -d`` cannot fool it.  An entry is recorded only if the
    file's mtime and ctime are older than the start of the save that read it by more than
    :data:`RACY_NS`: a write in the same timestamp tick as our read could otherwise go unseen
    (git's "racily clean" problem).  Such files are simply hashed again next time.
    """

    RACY_NS = 100_000_000  # 100 ms, far beyond the coarse filesystem timestamp tick

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[tuple, list[ChunkRef]]] = {}
        self._lock = threading.Lock()

    def get(self, f: _File, chunk_size: int) -> Optional[list[ChunkRef]]:
        with self._lock:
            hit = self._entries.get((f.abs, chunk_size))
        if hit is None or hit[0] != f.fingerprint:
            return None
        return hit[1]

    def put(self, f: _File, chunk_size: int, chunks: list[ChunkRef], start_ns: int) -> None:
        _dev, _ino, _size, mtime_ns, ctime_ns = f.fingerprint
        if max(mtime_ns, ctime_ns) >= start_ns - self.RACY_NS:
            return
        with self._lock:
            self._entries[(f.abs, chunk_size)] = (f.fingerprint, chunks)


class BlobWriter:
    """Uploads buffers as content-addressed blobs, skipping those already stored.

    ``known`` is a set of hashes known to be stored (shared across saves of one process) so that
    repeated saves do not even ask the store whether a blob exists.
    """

    def __init__(self, storage: Storage, known: Optional[set] = None):
        self.storage = storage
        self.known = known if known is not None else set()
        self.stat_cache = StatCache()
        # blob -> the newest manifest this process committed that references it.
        self.referenced_by: dict[str, str] = {}
        self._lock = threading.Lock()

    def put_range(self, path: str, offset: int, length: int, stats: SaveStats) -> Optional[str]:
        """Store a file range through the backend's in-kernel fast path; None if it has none."""
        try:
            done = self.storage.ingest_range(path, offset, length, digest, blob_key)
        except OSError as exc:
            raise StorageError(
                "Saving %s into %s failed: %s" % (path, self.storage.url, exc)
            ) from exc
        if done is None:
            return None
        h, stored = done
        self._count(h, length, stored, stats, confirmed=True)
        return h

    def put(self, data: memoryview, stats: SaveStats) -> str:
        h = digest(data)
        key = blob_key(h)
        trusted = h in self.known
        stored = not (trusted or self.storage.exists(key))
        if stored:
            self.storage.put_bytes(key, data)
        self._count(h, len(data), stored, stats, confirmed=not trusted)
        return h

    def vouch(self, manifest_key: str, hashes: Iterable[str]) -> None:
        """Record that the committed manifest ``manifest_key`` references these blobs."""
        with self._lock:
            for h in hashes:
                self.referenced_by[h] = manifest_key

    def forget(self, hashes: Iterable[str]) -> None:
        """Stop trusting that these blobs are stored (e.g. garbage collection removed them)."""
        with self._lock:
            for h in hashes:
                self.known.discard(h)
                self.referenced_by.pop(h, None)

    def _count(self, h: str, length: int, stored: bool, stats: SaveStats, confirmed: bool) -> None:
        """Record a blob as known to be stored and account for it as uploaded or deduplicated."""
        with self._lock:
            if confirmed:
                stats.confirmed.add(h)
            if stored:
                stats.bytes_uploaded += length
                stats.blobs_uploaded += 1
            else:
                stats.bytes_deduplicated += length
                stats.blobs_deduplicated += 1
            self.known.add(h)


def _plan(
    files: list[_File], opts: TransferOptions, skip: set[int]
) -> Iterator[tuple[str, object]]:
    """Yield ('chunk', (file index, offset, length)) and ('pack', [file indices]) work units."""
    pack: list[int] = []
    pack_bytes = 0
    for i, f in enumerate(files):
        if f.size == 0 or i in skip:
            continue
        if f.size < opts.small_size:
            if pack and pack_bytes + f.size > opts.chunk_size:
                yield "pack", pack
                pack, pack_bytes = [], 0
            pack.append(i)
            pack_bytes += f.size
            continue
        for off in range(0, f.size, opts.chunk_size):
            yield "chunk", (i, off, min(opts.chunk_size, f.size - off))
    if pack:
        yield "pack", pack


def upload_tree(
    files: list[_File],
    writer: BlobWriter,
    opts: TransferOptions,
    stats: SaveStats,
    progress: Optional[Progress] = None,
) -> list[FileEntry]:
    """Hash and upload every byte of ``files``; return their manifest entries.

    Large files unchanged since this process last saved them (see :class:`StatCache`) reuse
    their chunk list: their blobs are known to be stored, so they count as deduplicated.
    ``progress`` is called (from worker threads) with each number of bytes done.
    """
    progress = progress or _no_progress
    start_ns = time.time_ns()
    chunks: list[dict[int, ChunkRef]] = [{} for _ in files]
    digests: dict[int, str] = {}
    cached: set[int] = set()
    for i, f in enumerate(files):
        hit = writer.stat_cache.get(f, opts.chunk_size) if f.size >= opts.small_size else None
        if hit is not None and all(c.blob in writer.known for c in hit):
            chunks[i] = {n: c for n, c in enumerate(hit)}
            cached.add(i)
            stats.bytes_deduplicated += f.size
            stats.blobs_deduplicated += len(hit)
            progress(f.size)
    pool = _BufferPool(opts.chunk_size + opts.small_size)
    lock = threading.Lock()

    def do_chunk(i: int, off: int, length: int) -> None:
        h = writer.put_range(files[i].abs, off, length, stats)
        if h is not None:
            with lock:
                chunks[i][off] = ChunkRef(h, 0, length)
                stats.bytes_read += length
            progress(length)
            return
        buf = pool.take()
        try:
            view = memoryview(buf)[:length]
            _read_into(files[i].abs, off, view)
            h = writer.put(view, stats)
            with lock:
                chunks[i][off] = ChunkRef(h, 0, length)
                stats.bytes_read += length
            progress(length)
        finally:
            pool.give(buf)

    def do_pack(indices: list[int]) -> None:
        buf = pool.take()
        try:
            pos = 0
            layout = []
            for i in indices:
                size = files[i].size
                view = memoryview(buf)[pos : pos + size]
                _read_into(files[i].abs, 0, view)
                layout.append((i, pos, size, digest(view)))
                pos += size
            h = writer.put(memoryview(buf)[:pos], stats)
            with lock:
                for i, start, size, d in layout:
                    chunks[i][0] = ChunkRef(h, start, size)
                    digests[i] = d
                stats.bytes_read += pos
            progress(pos)
        finally:
            pool.give(buf)

    def jobs() -> Iterator[Callable[[], None]]:
        for kind, arg in _plan(files, opts, cached):
            if kind == "chunk":
                yield lambda a=arg: do_chunk(*a)
            else:
                yield lambda a=arg: do_pack(a)

    _run_bounded(jobs(), opts.workers, opts.inflight)
    stats.files = len(files)
    for i, f in enumerate(files):
        if f.size >= opts.small_size and i not in cached:
            ordered = [chunks[i][off] for off in sorted(chunks[i])]
            writer.stat_cache.put(f, opts.chunk_size, ordered, start_ns)
    return [
        FileEntry(
            path=f.rel,
            size=f.size,
            mode=f.mode,
            chunks=[chunks[i][off] for off in sorted(chunks[i])],
            digest=digests.get(i),
        )
        for i, f in enumerate(files)
    ]


# ---------------------------------------------------------------------------------------- load
def _fetch_verified(storage: Storage, manifest: Manifest, blob: str, what: str) -> bytes:
    key = blob_key(blob)
    for attempt in (0, 1):
        try:
            data = storage.get_bytes(key)
        except StorageNotFound as exc:
            raise CheckpointIncomplete(
                "Checkpoint %s is incomplete: blob %s (data of %s) is missing from %s."
                % (manifest.key, blob, what, storage.url)
            ) from exc
        if digest(data) == blob:
            return data
        if attempt == 0:
            continue  # a flip in transit is not corruption at rest: fetch once more
    raise CheckpointIntegrityError(
        "Checkpoint %s: file %s failed verification (blob %s does not match its BLAKE3 hash). "
        "The stored data is corrupt; load another checkpoint." % (manifest.key, what, blob)
    )


def _check_slice(manifest: Manifest, blob: str, entry: FileEntry, piece, length: int) -> None:
    if len(piece) != length:
        raise CheckpointIntegrityError(
            "Checkpoint %s: blob %s is shorter than the manifest says (file %s)."
            % (manifest.key, blob, entry.path)
        )
    if entry.digest is not None and digest(piece) != entry.digest:
        raise CheckpointIntegrityError(
            "Checkpoint %s: file %s does not match its recorded hash." % (manifest.key, entry.path)
        )


def _fetch_local(storage: Storage, manifest: Manifest, blob: str, uses: list) -> bool:
    """Fast path for stores of plain local files: verify the blob through mmap and copy its
    slices in the kernel.  False when not applicable or the blob does not verify (the generic
    path then re-reads it and reports the error)."""
    path = storage.local_path(blob_key(blob))
    if path is None or not hasattr(os, "copy_file_range"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return False
        with map_readonly(fd, size) as mapped:
            view = memoryview(mapped)
            try:
                if digest(view) != blob:
                    return False
                for tmp, entry, file_pos, c in uses:
                    _check_slice(
                        manifest, blob, entry, view[c.offset : c.offset + c.length], c.length
                    )
                    out = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
                    try:
                        copy_range(fd, out, c.length, c.offset, file_pos, what=path)
                    finally:
                        os.close(out)
            except OSError as exc:
                if exc.errno in UNSUPPORTED_COPY:
                    return False
                raise
            finally:
                view.release()
        return True
    finally:
        os.close(fd)


def target_path(dest: str, rel: str, cache: Optional[dict] = None) -> str:
    """Join a validated manifest path to ``dest``, refusing anything that escapes it.

    ``cache`` memoises resolved parent directories, so a load of many files resolves each
    directory once; an existing symlink at the final component is still resolved and refused
    if it points outside ``dest``.
    """
    safe_relpath(rel)
    path = os.path.join(dest, *rel.split("/"))
    cache = {} if cache is None else cache
    parent = os.path.dirname(path)
    for d in (dest, parent):
        if d not in cache:
            cache[d] = os.path.realpath(d)
    root, real_parent = cache[dest], cache[parent]
    real = os.path.join(real_parent, os.path.basename(path))
    if os.path.islink(path):
        real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        from ..errors import ManifestError

        raise ManifestError(
            "Manifest path %r would be written outside %s (through a symlink?); refusing."
            % (rel, dest)
        )
    return path


def download_tree(
    storage: Storage,
    manifest: Manifest,
    dest: str,
    opts: TransferOptions,
    progress: Optional[Progress] = None,
) -> int:
    """Materialise ``manifest`` under the directory ``dest``; return bytes written.

    Files are written to temp names and renamed into place only after every blob has been
    fetched and verified, so a failed load leaves no partially written file behind.
    """
    progress = progress or _no_progress
    # Validate every target before touching the destination: a bad path writes nothing.
    resolved: dict = {}
    dirs = [target_path(dest, d, resolved) for d in manifest.dirs]
    finals = [target_path(dest, entry.path, resolved) for entry in manifest.files]
    os.makedirs(dest, exist_ok=True)
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    temps: list[tuple[str, str, FileEntry]] = []
    by_blob: dict[str, list[tuple[str, FileEntry, int, ChunkRef]]] = {}
    try:
        made: set = set()
        for entry, final in zip(manifest.files, finals):
            parent = os.path.dirname(final)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            tmp = final + _TMP_SUFFIX + token
            # A file held by one slice (most files; every small one) is created by the worker
            # that has its bytes; only multi-chunk and empty files are created up front.
            if len(entry.chunks) != 1:
                with open(tmp, "wb") as f:
                    if entry.size:
                        f.truncate(entry.size)
            temps.append((tmp, final, entry))
            pos = 0
            for c in entry.chunks:
                by_blob.setdefault(c.blob, []).append((tmp, entry, pos, c))
                pos += c.length

        written = [0]
        lock = threading.Lock()

        def fetch(blob: str, uses: list) -> None:
            if _fetch_local(storage, manifest, blob, uses):
                done = sum(use[3].length for use in uses)
                with lock:
                    written[0] += done
                progress(done)
                return
            data = _fetch_verified(storage, manifest, blob, uses[0][1].path)
            view = memoryview(data)
            for tmp, entry, file_pos, c in uses:
                piece = view[c.offset : c.offset + c.length]
                _check_slice(manifest, blob, entry, piece, c.length)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    done = 0
                    while done < len(piece):
                        done += os.pwrite(fd, piece[done:], file_pos + done)
                finally:
                    os.close(fd)
                with lock:
                    written[0] += c.length
                progress(c.length)

        jobs = (lambda b=b, u=u: fetch(b, u) for b, u in by_blob.items())
        _run_bounded(jobs, opts.workers, opts.inflight)
        for tmp, final, entry in temps:
            os.chmod(tmp, entry.mode & 0o7777 or 0o644)
            os.replace(tmp, final)
        temps = []
        return written[0]
    finally:
        for tmp, _final, _entry in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def timed(stats: SaveStats, phase: str):
    """Context manager adding the elapsed seconds of a block to ``stats.seconds[phase]``."""

    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            stats.seconds[phase] = stats.seconds.get(phase, 0.0) + time.perf_counter() - self.t

    return _T()
