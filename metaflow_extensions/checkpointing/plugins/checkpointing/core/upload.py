"""Save: files -> hashed, deduplicated blobs.

Save reads every byte exactly once: each read buffer is hashed (BLAKE3) and, unless a blob with
that hash is already stored, uploaded from the same buffer.  Large files are split into fixed-size
chunks; files smaller than ``small_size`` are concatenated into *packs* of up to ``chunk_size``
bytes so that many tiny files cost a few requests, not one each.  Work runs on a thread pool
(hashing, file I/O and network calls release the GIL) with at most ``inflight`` buffers alive,
so memory stays bounded by ``inflight * (chunk_size + small_size)`` whatever the checkpoint size.

On a local store both are written into a staged file of the store
(:meth:`.Storage.ingest_range`, :meth:`.Storage.ingest_filled`): through a 1 MiB buffer that
hashes the bytes it writes (:mod:`.packing`, ``oscopy.copy_hashing``), or, where the filesystem
clones, by the kernel and then hashed from a read-only mapping.  Either way the blob's name is
the hash of the bytes as stored, and no 16 MiB buffer is filled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Callable, Optional

from ..errors import StorageError
from ..storage.base import Storage
from .codec import encode, name_of
from .layout import blob_key
from .lease_writer import WriterLease
from .manifest import ChunkRef, FileEntry
from .packing import StagedPack
from .scan import _check_source, _File, _read_into
from .transfer import (
    Progress,
    SaveStats,
    TransferOptions,
    _no_progress,
    _run_bounded,
    digest,
)


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
    repeated saves do not even ask the store whether a blob exists.  ``lease`` is this writer's
    side of the GC liveness protocol (:mod:`.leases`): every blob a put stores is credited to
    the lease session current when the put was issued.
    """

    def __init__(
        self, storage: Storage, known: Optional[set] = None, lease: Optional[WriterLease] = None
    ):
        self.storage = storage
        self.known = known if known is not None else set()
        self.lease = lease if lease is not None else WriterLease(storage)
        self.stat_cache = StatCache()
        # blob -> the newest manifest this process committed that references it.
        self.referenced_by: dict[str, str] = {}
        # Source devices the store's in-kernel pack path declined (EXDEV: another filesystem):
        # their packs are read through memory at once, not staged and then staged again.
        self.no_kernel_packs: set = set()
        self._lock = threading.Lock()

    def put_range(self, path: str, offset: int, length: int, stats: SaveStats) -> Optional[str]:
        """Store a file range through the backend's in-kernel fast path; None if it has none."""
        session = self.lease.current  # before the put: the blob is younger than its start
        try:
            done = self.storage.ingest_range(path, offset, length, digest, blob_key)
        except OSError as exc:
            raise StorageError(
                "Saving %s into %s failed: %s" % (path, self.storage.url, exc)
            ) from exc
        if done is None:
            return None
        h, stored = done
        if stored:
            self.lease.credit(session, h)
            stats.bytes_stored += length
        self._count(h, length, stored, stats, confirmed=True)
        return h

    def put_filled(
        self,
        length: int,
        fill: Callable[[int], None],
        digest_of: Callable[[memoryview], str],
        stats: SaveStats,
        what: str = "a pack of files",
    ) -> Optional[str]:
        """Store the ``length`` bytes ``fill(fd)`` writes through the backend's in-kernel
        path (:meth:`.Storage.ingest_filled`), named ``digest_of(the bytes as stored)``;
        None if the backend has no such path.  A store write failing is a ``StorageError``
        naming the store and ``what``; a source that cannot be read fails ``fill``."""
        session = self.lease.current  # before the put: the blob is younger than its start
        try:
            done = self.storage.ingest_filled(length, fill, digest_of, blob_key)
        except OSError as exc:  # the store's side (full, read-only): the source's is not OSError
            raise StorageError(
                "Saving %s into %s failed: %s" % (what, self.storage.url, exc)
            ) from exc
        if done is None:
            return None
        h, stored = done
        if stored:
            self.lease.credit(session, h)
            stats.bytes_stored += length
        # A blob this process already trusted counts as trusted, not confirmed, as in put():
        # the pre-commit check looks it up again, nearer the commit.
        self._count(h, length, stored, stats, confirmed=stored or h not in self.known)
        return h

    def put(self, data: memoryview, stats: SaveStats, codec: Optional[str] = None) -> str:
        """Store ``data`` unless a blob of the same content is stored; return its stored name.

        With ``codec`` (:mod:`.codec`), a new blob is stored encoded when that pays.  The blob's
        identity is the hash of the plain bytes, so a compressed save reuses a copy stored in
        either form; a plain save looks for the plain one only (one existence check, as before
        codecs, and what the local in-kernel fast path does).
        """
        h = digest(data)
        if codec is not None:
            return self._put_encoded(h, data, stats, codec)
        key = blob_key(h)
        trusted = h in self.known
        session = self.lease.current
        stored = not (trusted or self.storage.exists(key))
        if stored:
            self.storage.put_bytes(key, data)
            self.lease.credit(session, h)
            stats.bytes_stored += len(data)
        self._count(h, len(data), stored, stats, confirmed=not trusted)
        return h

    def _put_encoded(self, h: str, data: memoryview, stats: SaveStats, codec: str) -> str:
        packed = name_of(h, codec)
        for name in (packed, h):
            if name in self.known:
                self._count(name, len(data), False, stats, confirmed=False)
                return name
        session = self.lease.current
        for name in (packed, h):
            if self.storage.exists(blob_key(name)):
                self._count(name, len(data), False, stats, confirmed=True)
                return name
        out = encode(codec, data)
        name = h if out is None else packed
        self.storage.put_bytes(blob_key(name), data if out is None else out)
        self.lease.credit(session, name)
        stats.bytes_stored += len(data) if out is None else len(out)
        self._count(name, len(data), True, stats, confirmed=True)
        return name

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


def _pack_in_kernel(
    files: list[_File],
    indices: list[int],
    writer: BlobWriter,
    stats: SaveStats,
    lock: threading.Lock,
    chunks: list[dict[int, ChunkRef]],
    digests: dict[int, str],
) -> bool:
    """Store the pack of ``files[indices]`` through the backend's staged-file path
    (:class:`.packing.StagedPack`).  False if the backend has no such path."""
    devices = {files[i].fingerprint[:1] for i in indices}
    if devices & writer.no_kernel_packs:
        return False
    layout = []
    pos = 0
    for i in indices:
        layout.append((i, pos, files[i].size))
        pos += files[i].size
    pack = StagedPack([(files[i], start, size) for i, start, size in layout])
    what = "a pack of %d files (%s, ...)" % (len(indices), files[indices[0]].abs)
    h = writer.put_filled(pos, pack.fill, pack.digest_of, stats, what)
    if h is None:
        writer.no_kernel_packs |= devices
        return False
    with lock:
        for (i, start, size), own in zip(layout, pack.own):
            chunks[i][0] = ChunkRef(h, start, size)
            digests[i] = own
        stats.bytes_read += pos
    return True


def upload_tree(
    files: list[_File],
    writer: BlobWriter,
    opts: TransferOptions,
    stats: SaveStats,
    progress: Optional[Progress] = None,
) -> list[FileEntry]:
    """Hash and upload every byte of ``files``; return their manifest entries.

    Large files unchanged since this process last saved them (see :class:`StatCache`) reuse
    their chunk list: their blobs are known to be stored, so they count as deduplicated.  So
    does a file seen again in this save through a directory alias or a hard link (the same
    device, inode, size and times): it is read once.  ``progress`` is called (from worker
    threads) with each number of bytes done.
    """
    progress = progress or _no_progress
    start_ns = time.time_ns()
    chunks: list[dict[int, ChunkRef]] = [{} for _ in files]
    digests: dict[int, str] = {}
    same_as: dict[int, int] = {}  # file index -> the index of the same file, read instead
    first: dict[tuple, int] = {}
    for i, f in enumerate(files):
        if f.size and f.fingerprint:
            j = first.setdefault(f.fingerprint, i)
            if j != i:
                same_as[i] = j
    cached: set[int] = set()
    for i, f in enumerate(files):
        if i in same_as:
            continue
        hit = writer.stat_cache.get(f, opts.chunk_size) if f.size >= opts.small_size else None
        if hit is not None and all(c.blob in writer.known for c in hit):
            chunks[i] = {n: c for n, c in enumerate(hit)}
            cached.add(i)
            stats.bytes_deduplicated += f.size
            stats.blobs_deduplicated += len(hit)
            progress(f.size)
    pool = _BufferPool(opts.chunk_size + opts.small_size)
    lock = threading.Lock()

    codec = opts.compression

    def do_chunk(i: int, off: int, length: int) -> None:
        try:
            # The in-kernel fast path stores plain bytes: not when blobs are to be encoded.
            h = None if codec else writer.put_range(files[i].abs, off, length, stats)
        except StorageError:
            _check_source(files[i], failed=True)  # a source problem is reported as such
            raise
        if h is not None:
            _check_source(files[i])
            with lock:
                chunks[i][off] = ChunkRef(h, 0, length)
                stats.bytes_read += length
            progress(length)
            return
        buf = pool.take()
        try:
            view = memoryview(buf)[:length]
            _read_into(files[i], off, view)
            h = writer.put(view, stats, codec)
            with lock:
                chunks[i][off] = ChunkRef(h, 0, length)
                stats.bytes_read += length
            progress(length)
        finally:
            pool.give(buf)

    def do_pack(indices: list[int]) -> None:
        # Locally, packs are assembled in the kernel (no Python buffer to fill and zero).
        if not codec and _pack_in_kernel(files, indices, writer, stats, lock, chunks, digests):
            progress(sum(files[i].size for i in indices))
            return
        buf = pool.take()
        try:
            pos = 0
            layout = []
            for i in indices:
                size = files[i].size
                view = memoryview(buf)[pos : pos + size]
                _read_into(files[i], 0, view)
                layout.append((i, pos, size, digest(view)))
                pos += size
            h = writer.put(memoryview(buf)[:pos], stats, codec)
            with lock:
                for i, start, size, d in layout:
                    chunks[i][0] = ChunkRef(h, start, size)
                    digests[i] = d
                stats.bytes_read += pos
            progress(pos)
        finally:
            pool.give(buf)

    def jobs() -> Iterator[Callable[[], None]]:
        for kind, arg in _plan(files, opts, cached | same_as.keys()):
            if kind == "chunk":
                yield lambda a=arg: do_chunk(*a)
            else:
                yield lambda a=arg: do_pack(a)

    _run_bounded(jobs(), opts.workers, opts.inflight)
    for i, j in same_as.items():
        chunks[i] = chunks[j]
        if j in digests:
            digests[i] = digests[j]
        stats.bytes_deduplicated += files[i].size
        stats.blobs_deduplicated += len(chunks[j])
        progress(files[i].size)
    stats.files = len(files)
    for i, f in enumerate(files):
        if f.size >= opts.small_size and i not in cached and i not in same_as:
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
