"""CheckpointStore: save, list, read, load and delete checkpoints on one storage backend.

This is the one entry point the runtime (``current.checkpoint``), the client and the CLI use; it
ties together scopes, manifests, the transfer pipelines, the commit protocol and load policies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ..errors import CheckpointNotFound, ManifestError, StorageNotFound
from ..storage.base import Storage
from . import commit, policies
from . import manifest as mf
from .manifest import Manifest, ManifestHeader
from .scope import Scope, validate_name
from .transfer import BlobWriter, TransferOptions, download_tree


class CheckpointStore:
    """Checkpoints on one backend.

    Parameters
    ----------
    storage : Storage
        The backend, rooted at the checkpoint root (``<datastore root>/mf.checkpointing``).
    options : TransferOptions, optional
        Chunking and concurrency.
    """

    def __init__(self, storage: Storage, options: Optional[TransferOptions] = None):
        self.storage = storage
        self.options = options or TransferOptions()
        # Hashes of blobs this process has stored or seen stored: repeated saves skip the
        # existence check.  Blobs are immutable and GC never removes a referenced one.
        self._writer = BlobWriter(storage)

    @property
    def url(self) -> str:
        return self.storage.url

    # ------------------------------------------------------------------ save
    def save(
        self,
        src: str,
        scope: Scope,
        *,
        name: str = "mfchckpt",
        metadata: Optional[dict] = None,
        latest: bool = True,
    ) -> Manifest:
        """Save a file or directory and commit it; returns the committed manifest."""
        name = validate_name(name)
        metadata = mf.validate_metadata(metadata)
        return commit.save(
            self.storage,
            src,
            scope,
            name=name,
            metadata=metadata,
            latest=bool(latest),
            opts=self.options,
            writer=self._writer,
        )

    # ------------------------------------------------------------------ browse
    def headers(
        self,
        prefix: str,
        *,
        name: Optional[str] = None,
        run: Optional[str] = None,
        task: Optional[str] = None,
        attempt: Optional[int] = None,
        latest_only: bool = False,
    ) -> list[ManifestHeader]:
        """Committed checkpoints under ``prefix`` matching the filters, newest first."""
        out = []
        for h in policies.list_headers(self.storage, prefix):
            if name is not None and h.name != name:
                continue
            if run is not None and h.scope.run != str(run):
                continue
            if task is not None and h.scope.task != str(task):
                continue
            if attempt is not None and h.scope.attempt != int(attempt):
                continue
            if latest_only and not h.latest:
                continue
            out.append(h)
        return out

    def read(self, key: str) -> Manifest:
        """Read and validate the manifest stored at ``key``.

        Raises
        ------
        CheckpointNotFound
            If no manifest is committed at ``key``.
        ManifestError
            If it exists but cannot be parsed or validated.
        """
        mf.parse_key(key)
        try:
            data = self.storage.get_bytes(key)
        except StorageNotFound as exc:
            raise CheckpointNotFound(
                "No checkpoint with key %s in %s (deleted, never committed, or another store)."
                % (key, self.url)
            ) from exc
        return mf.loads(data, key)

    def read_many(self, keys: Sequence[str]) -> list[Manifest]:
        """Read several manifests in parallel, in the order given."""
        if len(keys) <= 1:
            return [self.read(k) for k in keys]
        with ThreadPoolExecutor(min(len(keys), self.options.workers)) as pool:
            return list(pool.map(self.read, keys))

    # ------------------------------------------------------------------ load
    def load(self, manifest: Manifest, dest: str) -> int:
        """Write the files of ``manifest`` under the directory ``dest``; return bytes written."""
        return download_tree(self.storage, manifest, os.path.abspath(dest), self.options)

    def resolve(
        self,
        policy: str,
        scope: Scope,
        origin_runs: Callable[[], Iterable[str]] = lambda: (),
    ) -> policies.Resolution:
        """Which checkpoint a task in ``scope`` starts from under ``policy``."""
        return policies.resolve(self.storage, policy, scope, origin_runs)

    # ------------------------------------------------------------------ delete
    def delete(self, key: str) -> None:
        """Delete one checkpoint (its manifest).  Its blobs are reclaimed by GC only."""
        try:
            mf.parse_key(key)
        except ManifestError as exc:
            raise CheckpointNotFound("Cannot delete %r: not a checkpoint key." % key) from exc
        self.storage.delete(key)
