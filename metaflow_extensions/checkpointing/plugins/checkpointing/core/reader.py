"""Read one file of a checkpoint without downloading the rest.

A small file packed with others is fetched with one ranged read of its slice and verified against
the file's own hash; a large file is read chunk by chunk, each chunk blob verified when fetched.
Either way at most one chunk of a file is held in memory.
"""

from __future__ import annotations

import bisect
import io
import itertools
import posixpath
from typing import Optional

from ..errors import (
    CheckpointIncomplete,
    CheckpointIntegrityError,
    CheckpointNotFound,
    StorageNotFound,
)
from ..storage.base import Storage
from .download import _fetch_verified, blob_end
from .layout import blob_key
from .manifest import FileEntry, Manifest
from .transfer import digest


def find_entry(manifest: Manifest, path: str) -> FileEntry:
    """The entry of ``path`` (relative, '/'-separated) in ``manifest``.

    Raises
    ------
    CheckpointNotFound
        If the checkpoint has no such file; the message lists a few files it does have.
    """
    wanted = posixpath.normpath(str(path).replace("\\", "/")).lstrip("/")
    for entry in manifest.files:
        if entry.path == wanted:
            return entry
    sample = ", ".join(e.path for e in manifest.files[:5]) or "no files"
    more = " and %d more" % (len(manifest.files) - 5) if len(manifest.files) > 5 else ""
    raise CheckpointNotFound(
        "Checkpoint %s has no file %r (it has %s%s)." % (manifest.key, path, sample, more),
        key=manifest.key,
        path=str(path),
    )


class CheckpointFile(io.RawIOBase):
    """A read-only, seekable, verified stream over one file of a checkpoint (``open(file)``).

    Seeking is free; reading fetches (and verifies) only the chunks that hold the bytes read,
    so ``torch.load`` or ``zipfile`` on a large file read what they need.
    """

    def __init__(self, storage: Storage, manifest: Manifest, entry: FileEntry):
        super().__init__()
        self._storage = storage
        self._manifest = manifest
        self._entry = entry
        self._starts = list(itertools.accumulate((c.length for c in entry.chunks), initial=0))
        self._pos = 0
        self._cached: tuple[int, bytes] = (-1, b"")  # (chunk index, its bytes)
        self.name = entry.path
        self.size = entry.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position %d" % (base + offset))
        self._pos = base + offset
        return self._pos

    def readinto(self, b) -> int:
        if self._pos >= self.size:
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        if self._cached[0] != index:
            self._cached = (index, self._fetch(index))
        data = self._cached[1]
        start = self._pos - self._starts[index]
        n = min(len(b), len(data) - start)
        b[:n] = data[start : start + n]
        self._pos += n
        return n

    def _fetch(self, index: int) -> bytes:
        c = self._entry.chunks[index]
        # A compressed blob is read whole (no byte range of it is a range of the file).
        if self._entry.digest is None or "." in c.blob:
            data = _fetch_verified(
                self._storage,
                self._manifest,
                c.blob,
                self._entry.path,
                blob_end(self._manifest, c.blob),
            )
            piece = data[c.offset : c.offset + c.length]
            if len(piece) != c.length:
                raise CheckpointIntegrityError(
                    "Checkpoint %s: blob %s is shorter than the manifest says (file %s)."
                    % (self._manifest.key, c.blob, self._entry.path),
                    key=self._manifest.key,
                    path=self._entry.path,
                    reason="blob %s is shorter than the manifest says" % c.blob,
                )
            if self._entry.digest is not None and digest(piece) != self._entry.digest:
                raise CheckpointIntegrityError(
                    "Checkpoint %s: file %s does not match its recorded hash."
                    % (self._manifest.key, self._entry.path),
                    key=self._manifest.key,
                    path=self._entry.path,
                )
            return piece
        # A packed file: read only its slice and check the file's own hash.
        return self._fetch_slice(c.blob, c.offset, c.length)

    def _fetch_slice(self, blob: str, offset: int, length: int) -> bytes:
        last: Optional[bytes] = None
        for _ in (0, 1):  # a flip in transit is not corruption at rest: fetch once more
            try:
                last = self._storage.get_bytes(blob_key(blob), offset, length)
            except StorageNotFound as exc:
                raise CheckpointIncomplete(
                    "Checkpoint %s is incomplete: blob %s (data of %s) is missing from %s."
                    % (self._manifest.key, blob, self._entry.path, self._storage.url),
                    key=self._manifest.key,
                    path=self._entry.path,
                    url=self._storage.url,
                    reason="blob %s is missing" % blob,
                ) from exc
            if len(last) == length and digest(last) == self._entry.digest:
                return last
        raise CheckpointIntegrityError(
            "Checkpoint %s: file %s does not match its recorded hash; the stored data is "
            "corrupt." % (self._manifest.key, self._entry.path),
            key=self._manifest.key,
            path=self._entry.path,
            reason="slice of blob %s at %d+%d" % (blob, offset, length),
        )


def open_file(storage: Storage, manifest: Manifest, path: str) -> io.BufferedReader:
    """A buffered binary stream over the file ``path`` of ``manifest``."""
    entry = find_entry(manifest, path)
    return io.BufferedReader(CheckpointFile(storage, manifest, entry), buffer_size=1 << 20)
