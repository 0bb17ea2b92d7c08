"""Read one file of a checkpoint without downloading the rest.

A small file packed with others is fetched with one ranged read of its slice and verified against
the file's own hash; a large file is read chunk by chunk, each chunk blob verified when fetched.
Either way at most one chunk of a file is held in memory.
"""

from __future__ import annotations

import io
import posixpath
from typing import Optional

from ..errors import CheckpointIntegrityError, CheckpointNotFound, StorageNotFound
from ..storage.base import Storage
from .manifest import FileEntry, Manifest
from .scope import blob_key
from .transfer import _fetch_verified, digest


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
        "Checkpoint %s has no file %r (it has %s%s)." % (manifest.key, path, sample, more)
    )


class CheckpointFile(io.RawIOBase):
    """A read-only, verified stream over one file of a checkpoint (``open(file)``)."""

    def __init__(self, storage: Storage, manifest: Manifest, entry: FileEntry):
        super().__init__()
        self._storage = storage
        self._manifest = manifest
        self._entry = entry
        self._chunk = 0  # index of the next chunk to fetch
        self._buffer = memoryview(b"")
        self.name = entry.path
        self.size = entry.size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buffer:
            if self._chunk >= len(self._entry.chunks):
                return 0
            self._buffer = memoryview(self._fetch(self._chunk))
            self._chunk += 1
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _fetch(self, index: int) -> bytes:
        c = self._entry.chunks[index]
        if self._entry.digest is None:
            data = _fetch_verified(self._storage, self._manifest, c.blob, self._entry.path)
            piece = data[c.offset : c.offset + c.length]
            if len(piece) != c.length:
                raise CheckpointIntegrityError(
                    "Checkpoint %s: blob %s is shorter than the manifest says (file %s)."
                    % (self._manifest.key, c.blob, self._entry.path)
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
                from ..errors import CheckpointIncomplete

                raise CheckpointIncomplete(
                    "Checkpoint %s is incomplete: blob %s (data of %s) is missing from %s."
                    % (self._manifest.key, blob, self._entry.path, self._storage.url)
                ) from exc
            if len(last) == length and digest(last) == self._entry.digest:
                return last
        raise CheckpointIntegrityError(
            "Checkpoint %s: file %s does not match its recorded hash; the stored data is "
            "corrupt." % (self._manifest.key, self._entry.path)
        )


def open_file(storage: Storage, manifest: Manifest, path: str) -> io.BufferedReader:
    """A buffered binary stream over the file ``path`` of ``manifest``."""
    entry = find_entry(manifest, path)
    return io.BufferedReader(CheckpointFile(storage, manifest, entry), buffer_size=1 << 20)
