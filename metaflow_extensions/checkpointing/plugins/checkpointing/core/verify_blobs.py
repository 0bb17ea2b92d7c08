"""Reading blobs back for a store check: every slice checkpoints take from a blob, and the
re-hash that tells a corrupt blob from a manifest declaring bytes its intact blob does not hold
(see :mod:`.verify` for who is to blame).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import blake3

from ..errors import StorageError, StorageNotFound
from ..storage.base import Storage
from . import manifest as mf
from .codec import MIN_SAVING, BoundedReader, DecodeError, declared_size, split
from .layout import blob_key

#: ``progress(phase, done, total)``: cumulative counts of one phase (``"manifests"`` and
#: ``"blobs"`` count objects, ``"bytes"`` counts bytes re-hashed), called from worker threads.
#: Phases follow each other; no call of a phase comes after the next phase started.
VerifyProgress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------ blob uses
@dataclass
class Uses:
    """Every slice that checkpoints take from one blob."""

    checkpoints: dict[str, list[str]] = field(default_factory=dict)
    #: (manifest key, file path, offset, length, file digest or None)
    slices: list[tuple[str, str, int, int, Optional[str]]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return max((off + n for _k, _p, off, n, _d in self.slices), default=0)

    def add(self, key: str, entry: mf.FileEntry, chunk: mf.ChunkRef) -> None:
        paths = self.checkpoints.setdefault(key, [])
        if not paths or paths[-1] != entry.path:
            paths.append(entry.path)
        self.slices.append((key, entry.path, chunk.offset, chunk.length, entry.digest))


class Counter:
    """Thread-safe cumulative progress of one phase."""

    def __init__(self, progress: Optional[VerifyProgress], phase: str, total: int):
        self.progress, self.phase, self.total = progress, phase, total
        self.done = 0
        self.lock = threading.Lock()
        if progress is not None:
            progress(phase, 0, total)

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            if self.progress is not None:
                self.progress(self.phase, self.done, self.total)


def parallel(fn: Callable, items: Sequence, workers: int) -> list:
    """``[fn(i) for i in items]``, on up to ``workers`` threads."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max(1, min(workers, len(items))), thread_name_prefix="mfckpt") as pool:
        return list(pool.map(fn, items))


#: Enough of a stored object for any zstd frame header (ZSTD_FRAMEHEADERSIZE_MAX).
HEAD = 18


def compressed_looks_whole(
    storage: Storage, blob: str, end: int, size: Optional[int] = None
) -> Optional[bool]:
    """A shallow check of the compressed blob ``blob``, which manifests need ``end`` plain
    bytes of: None when it does not exist, False when it must be read back (:func:`hash_blob`
    then tells who is to blame), True when it looks whole.

    It looks whole when its listed ``size`` (if known) is neither 0 nor more than a compressed
    blob of ``end`` bytes is ever stored at (:data:`.codec.MIN_SAVING`), and its first
    :data:`HEAD` bytes are a zstd frame header declaring exactly ``end`` plain bytes.  One small
    ranged read; nothing is decompressed.  A frame cut after its header, or a flipped byte in
    its body, still looks whole: only ``deep`` finds those.
    """
    codec = split(blob)[1]
    if size is not None and (size == 0 or size > end - end * MIN_SAVING):
        return False
    try:
        head = storage.get_bytes(blob_key(blob), 0, HEAD)
    except StorageNotFound:
        return None
    except StorageError:
        return False  # read back: the report says why it is unreadable
    try:
        return bool(head) and declared_size(codec, head, end) == end
    except DecodeError:
        return False


#: (manifest key, file path, what is wrong with that file's slice): a finding of one checkpoint.
SliceFinding = tuple[str, str, str]


def hash_blob(
    storage: Storage, blob: str, uses: Uses, size: Optional[int], window: int, counter: Counter
) -> tuple[bool, list[str], list[SliceFinding]]:
    """Read ``blob`` back in windows and check it; return (found, problems of the blob, findings
    of the slices).

    Each window is hashed into the blob's digest and into the digest of every packed file whose
    slice overlaps it, so memory stays at one window whatever the blob and file sizes.

    Who is to blame (see the module docstring): when the blob does not match its own hash (or
    cannot be read), the blob is corrupt, its problems say so and, for where the damage shows,
    the slices past its end and the packed files that no longer match; there are no slice
    findings.  When it matches, the blob is intact and its problems are empty; every slice past
    its end and every packed file not matching its digest is a finding of the manifest that
    declares it, never of the other users of the blob.
    """
    key = blob_key(blob)
    name, codec = split(blob)
    whole = blake3.blake3()  # the hash of transfer.digest, fed incrementally
    packed = [(s, blake3.blake3()) for s in uses.slices if s[4] is not None]
    pos = 0  # in the plain bytes
    read = [0]  # in the stored object

    def fetch(offset: int) -> bytes:
        if size is not None and offset >= size:
            return b""
        data = storage.get_bytes(key, offset, window)
        read[0] = offset + len(data)
        counter.add(len(data))
        return data

    try:
        if codec is not None:
            # A compressed blob is decoded as it is read, never past the plain length the
            # manifests need (uses.end): its plain bytes are hashed, in windows too.
            reader = BoundedReader(codec, fetch, uses.end, window)
            next_window = reader.next
        else:

            def next_window() -> bytes:
                if read[0] and (read[0] % window or (size is not None and read[0] >= size)):
                    return b""  # the last window was short, or the listed size is read
                return fetch(read[0])

        while True:
            data = next_window()
            if not data:
                break
            whole.update(data)
            end = pos + len(data)
            for (_k, _p, off, n, _d), h in packed:
                lo, hi = max(off, pos), min(off + n, end)
                if lo < hi:
                    h.update(memoryview(data)[lo - pos : hi - pos])
            pos = end
    except StorageNotFound:
        if read[0] == 0:
            return False, [], []
        return True, ["disappeared while it was read"], []
    except StorageError as exc:
        return True, ["unreadable: %s" % exc.message], []
    except DecodeError as exc:
        return True, ["not a valid %s object (%s)" % (codec, exc)], []
    past = [(k, p, off, n) for k, p, off, n, _d in uses.slices if off + n > pos]
    unmatched = [
        (k, p, off, n) for (k, p, off, n, d), h in packed if off + n <= pos and h.hexdigest() != d
    ]
    if whole.hexdigest() != name:
        return (
            True,
            ["content does not match its BLAKE3 hash"]
            + [
                "holds %d bytes, but %s of %s needs bytes up to %d" % (pos, p, k, off + n)
                for k, p, off, n in past[:3]
            ]
            + [
                "file %s of %s does not match its recorded hash" % (p, k)
                for k, p, _o, _n in unmatched
            ],
            [],
        )
    return (
        True,
        [],
        [
            (
                k,
                p,
                "needs bytes %d to %d of blob %s, which holds only %d bytes (and matches its hash)"
                % (off, off + n, blob, pos),
            )
            for k, p, off, n in past
        ]
        + [
            (
                k,
                p,
                "does not match its recorded hash (bytes %d to %d of blob %s, which matches its "
                "own hash)" % (off, off + n, blob),
            )
            for k, p, off, n in unmatched
        ],
    )
