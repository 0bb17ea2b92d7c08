"""CheckpointStore: save, list, read, load and delete checkpoints on one storage backend.

This is the one entry point the runtime (``current.checkpoint``), the client and the CLI use; it
ties together scopes, manifests, the transfer pipelines, the commit protocol and load policies.

Long module: the store's one facade (save, browse, load, lifecycle) delegates each job to its
own module; what stays here is the glue between them (e.g. the dating of named versions).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

from ..errors import CheckpointConfigError, CheckpointNotFound, ManifestError, StorageNotFound
from ..storage.base import Storage
from . import clock, commit, gang, gc, pins, policies, promotions, pruning, retention, usage
from . import manifest as mf
from .bulk import paused_gc
from .download import download_tree
from .lease_writer import WriterLease
from .manifest import Manifest, ManifestHeader
from .position import RANK0, Position
from .reader import open_file
from .scope import Scope, library_scope, validate_name
from .summary import SummaryIndex
from .transfer import Progress, TransferOptions
from .upload import BlobWriter

T = TypeVar("T")


class CheckpointStore:
    """Checkpoints on one backend.

    Parameters
    ----------
    storage : Storage
        The backend, rooted at the checkpoint root (``<datastore root>/mf.checkpointing``).
    options : TransferOptions, optional
        Chunking and concurrency.
    lease_seconds : float, optional
        Lifetime of this writer's lease, which keeps GC from deleting what a save in flight
        relies on (see :mod:`.leases`; default 30 minutes).
    """

    def __init__(
        self,
        storage: Storage,
        options: Optional[TransferOptions] = None,
        lease_seconds: Optional[float] = None,
    ):
        self.storage = storage
        self.options = options or TransferOptions()
        # Hashes of blobs this process has stored or seen stored: repeated saves skip the
        # existence check.  The writer's lease keeps GC from removing them (see .leases).
        self._writer = BlobWriter(storage, lease=WriterLease(storage, lease_seconds))
        self._summaries = SummaryIndex(storage, self.read_many)

    def close(self) -> None:
        """End this store's writer session: remove its lease objects (best effort; also done
        at process exit, and a lease left behind expires).  A later save starts a new one."""
        self._writer.lease.close()

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def writer(self) -> BlobWriter:
        """This store's writer session (its lease and the blobs it vouches for), shared by
        every commit into it from this process (a tier's upload credits blobs to it)."""
        return self._writer

    # ------------------------------------------------------------------ save
    def save(
        self,
        src: str,
        scope: Scope,
        *,
        name: str = "mfchckpt",
        metadata: Optional[dict] = None,
        latest: bool = True,
        reuse_identical: bool = False,
        progress: Optional[Progress] = None,
        created_ms: Optional[int] = None,
        seq: Optional[int] = None,
        publish: Optional[Callable[[Manifest], None]] = None,
        reuse: Optional[Callable[[Manifest], Optional[Manifest]]] = None,
        publisher: Optional[dict] = None,
        position: Position = RANK0,
        source: Optional[dict] = None,
    ) -> Manifest:
        """Save a file or directory and commit it; returns the committed manifest.

        With ``reuse_identical``, if the newest checkpoint of the same scope and name has the
        same files, metadata and ``latest`` flag, it is returned (its ``stats`` say
        ``reused=True``) and no new checkpoint is committed: uploading a model again is free.
        ``reuse`` is another such check: given the manifest about to be committed, it returns
        an already committed one to return instead (compare with :func:`same_content`).
        ``publisher`` (:func:`.promotions.publisher_record`) is recorded in a named
        checkpoint's manifest; ``reuse_identical`` then only reuses a version of that same
        publisher's namespace.  ``position`` is the writer (:mod:`.position`: rank 0 by
        default), ``source`` more fields of the manifest's ``source`` (a subprocess's
        ``rank``, ``local_rank`` and ``world_size``).

        A version of a named checkpoint (a library ``scope``, no ``created_ms`` given) is dated
        when it is about to commit, after every version of the name listed then
        (:func:`.clock.after`): versions sort in the order they were published whatever the
        publishers' clocks say.  That one listing also serves ``reuse_identical``.
        """
        name = validate_name(name)
        metadata = mf.validate_metadata(metadata)
        if scope.is_library and created_ms is None:
            reuse = self._dated_after_newest(reuse, reuse_identical)
        elif reuse_identical:
            reuse = self._same_as_newest
        return commit.save(
            self.storage,
            src,
            scope,
            name=name,
            metadata=metadata,
            latest=bool(latest),
            opts=self.options,
            writer=self._writer,
            reuse=reuse,
            progress=progress,
            created_ms=created_ms,
            seq=seq,
            publish=publish,
            source={**(source or {}), **({} if publisher is None else {"publisher": publisher})},
            position=position,
        )

    def save_gang(
        self,
        src: str,
        scope: Scope,
        *,
        name: str,
        metadata: Optional[dict],
        latest: bool,
        participant: gang.Participant,
        number: int,
        timeout: float,
        created_ms: Optional[int] = None,
        abort: Optional[gang.Abort] = None,
    ) -> Manifest:
        """One participant's share (its ``number``-th sharded save of ``name``) of a sharded
        checkpoint (:mod:`.gang`); the committed manifest (dated ``created_ms``, participant
        0's, default now) on every participant, or :class:`CheckpointIncomplete` (a part
        missing after ``timeout`` s, a participant gone, ``abort()`` said why to stop)."""
        name = validate_name(name)
        metadata = mf.validate_metadata(metadata)
        id = gang.save_id(scope, name, number, participant)
        index = participant.index
        part = self.save(
            src,
            scope,
            name=name,
            metadata=metadata,
            latest=latest,
            publish=lambda m: gang.write_part(self.storage, scope, id, index, m),
            progress=gang.upload_guard(name, scope, abort),
        )
        common = dict(name=name, timeout=timeout, abort=abort, number=number)
        if index == 0:
            return gang.commit(
                self.storage, scope, id, participant, metadata=metadata, latest=bool(latest),
                created_ms=created_ms, **common,
            )  # fmt: skip
        key = gang.wait_committed(self.storage, scope, id, participant, **common)
        # Only a checkpoint holding the part just stored is this save's (ADR 004 review r1).
        return gang.check_part(self.read(key), participant, part, number)

    def _dated_after_newest(
        self, reuse: Optional[Callable[[Manifest], Optional[Manifest]]], identical: bool
    ) -> Callable[[Manifest], Optional[Manifest]]:
        """The last step before a new version of a named checkpoint commits (``commit.save``
        calls ``reuse`` with the manifest about to be committed, after the upload): date it
        after the newest listed version, then look for a version to reuse instead."""

        def before_commit(candidate: Manifest) -> Optional[Manifest]:
            headers = self.headers(candidate.scope.task_prefix(), name=candidate.name)
            # Its key spells the date: it is written with this one.
            candidate.created_ms = clock.after(
                (h.created_ms for h in headers), candidate.created_ms
            )
            if identical:
                found = self._same_as_newest(candidate, headers)
                if found is not None:
                    return found
            return reuse(candidate) if reuse is not None else None

        return before_commit

    def _same_as_newest(
        self, candidate: Manifest, headers: Optional[list[ManifestHeader]] = None
    ) -> Optional[Manifest]:
        if headers is None:
            headers = self.headers(candidate.scope.task_prefix(), name=candidate.name)
        if candidate.scope.is_library:
            # Only a version of the same publisher's namespace: returning another namespace's
            # version would give the publisher a version its own namespace does not trust.
            newest = promotions.newest_published(
                headers, promotions.publisher_of(candidate.source), self.read
            )
        else:
            newest = self.read(headers[0].key) if headers else None
        if newest is None:
            return None
        same = (
            _content(newest) == _content(candidate)
            and newest.metadata == candidate.metadata
            and newest.latest == candidate.latest
        )
        return newest if same else None

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
        with paused_gc():  # a heap that only grows: see core/bulk.py
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
                % (key, self.url),
                key=key,
                url=self.url,
            ) from exc
        return mf.loads(data, key)

    def named(self, text: str, namespace: Optional[str] = None) -> Manifest:
        """The named checkpoint ``"name"`` / ``"name@latest"`` (the newest version trusted in
        ``namespace``) or ``"name@<version id prefix>"`` (that version, whoever published it)
        saved outside any task.  See :meth:`resolve_named`."""
        return self.resolve_named(text, namespace).manifest

    def resolve_named(self, text: str, namespace: Optional[str] = None) -> promotions.Resolution:
        """Resolve a named checkpoint reference for a reader in ``namespace``.

        An unpinned name resolves to the newest version published from ``namespace`` or
        promoted to it; ``namespace=None`` trusts every publisher (Metaflow's
        ``namespace(None)``).  A version (``name@<id prefix>``) is an explicit pin.

        Raises
        ------
        CheckpointNotFound
            No such name, or no single version matching.
        CheckpointScopeError
            The name has versions, but none published from ``namespace`` or promoted to it.
        """
        name, _, version = text.partition("@")
        validate_name(name)
        headers = self.headers(library_scope(name).step_prefix(), name=name)
        if not headers:
            raise CheckpointNotFound(
                "No checkpoint named %r in %s: save it with Checkpoint().save(path, name=%r) "
                "or `metaflow checkpoint upload PATH --name %s`." % (name, self.url, name, name)
            )
        if version in ("", "latest", "last"):
            return promotions.resolve(self.storage, name, headers, namespace, self.read)
        matches = [h for h in headers if h.id.startswith(version)]
        if len(matches) != 1:
            raise CheckpointNotFound(
                "Checkpoint %r has %s version matching %r; its versions, newest first: %s."
                % (
                    name,
                    "no" if not matches else "more than one",
                    version,
                    ", ".join(h.id for h in headers[:10]),
                )
            )
        return promotions.Resolution(self.read(matches[0].key), "pinned")

    def summaries(self, headers: Sequence[ManifestHeader]) -> dict[str, dict]:
        """Metadata, size, file count and save statistics of each header's checkpoint, by key
        (from the per-step summary index where it has them, else from the manifests)."""
        return self._summaries.summaries(headers)

    def open(self, manifest: Manifest, path: str) -> io.BufferedReader:
        """A verified binary stream over one file of a checkpoint (nothing else downloaded)."""
        return open_file(self.storage, manifest, path)

    def read_many(self, keys: Sequence[str]) -> list[Manifest]:
        """Read several manifests in parallel, in the order given."""
        return self.read_many_with(self.read, keys)

    def read_many_with(self, read: Callable[[str], T], keys: Sequence[str]) -> list[T]:
        """``read`` every key, in parallel, results in the order given."""
        if len(keys) <= 1:
            return [read(k) for k in keys]
        with ThreadPoolExecutor(min(len(keys), self.options.workers)) as pool:
            return list(pool.map(read, keys))

    # ------------------------------------------------------------------ load
    def load(
        self,
        manifest: Manifest,
        dest: str,
        progress: Optional[Progress] = None,
        fresh: bool = False,
    ) -> int:
        """Write the files of ``manifest`` under the directory ``dest``; return bytes written.

        ``progress`` is called (from worker threads) with each number of bytes written;
        ``fresh``: ``dest`` is an empty directory made for this load alone, renamed into place
        by the caller (files are written at their final names, see
        :func:`.download.download_tree`)."""
        dest = os.path.abspath(dest)
        return download_tree(self.storage, manifest, dest, self.options, progress, fresh)

    def resolve(
        self,
        policy: str,
        scope: Scope,
        origin_runs: Callable[[], Iterable[str]] = lambda: (),
        position: Position = RANK0,
    ) -> policies.Resolution:
        """Which checkpoint the process at ``position`` of a task in ``scope`` starts from
        under ``policy`` (see :func:`.policies.newest`)."""
        return policies.resolve(self.storage, policy, scope, origin_runs, position)

    # ------------------------------------------------------------------ lifecycle
    def delete(self, key: str, force: bool = False) -> None:
        """Delete one checkpoint (its manifest).  Its blobs are reclaimed by GC only.

        Raises
        ------
        CheckpointConfigError
            The checkpoint is pinned (and ``force`` is false): unpin it first.
        """
        try:
            mf.parse_key(key)
        except ManifestError as exc:
            raise CheckpointNotFound(
                "Cannot delete %r: not a checkpoint key." % key, key=key, reason="not a key"
            ) from exc
        if not force and pins.is_pinned(self.storage, key):
            raise CheckpointConfigError(
                "Checkpoint %s is pinned; unpin it first (Checkpoint().unpin(ref), CLI "
                "`checkpoint unpin REF`)." % key
            )
        self.storage.delete(key)

    def pin(self, key: str, pinned: bool = True) -> None:
        """Pin (or unpin) a committed checkpoint: retention never prunes a pinned one."""
        self.read(key)  # refuse to pin what does not exist
        (pins.pin if pinned else pins.unpin)(self.storage, key)

    def is_pinned(self, key: str) -> bool:
        return pins.is_pinned(self.storage, key)

    def prune(
        self,
        headers: Sequence[ManifestHeader],
        policy: retention.Retention,
        *,
        group_of: Callable[[ManifestHeader], str],
        dry_run: bool = False,
        protect_newest: bool = True,
        protect: Iterable[str] = (),
        within_task: bool = False,
    ) -> list[tuple[str, retention.Plan]]:
        """Apply ``policy`` to each group of ``headers``; delete what no rule keeps.

        Returns ``(group, plan)`` per group.  Pinned checkpoints and the keys in ``protect``
        are kept; so is each group's newest ``latest=True`` checkpoint as
        :func:`.policies.newest` picks it: as a retry does with ``within_task`` (the groups
        are checkpoints of one task), as ``eager`` does otherwise.  A group where a rule
        cannot be applied (unknown metric) is left alone with a warning in its plan.
        """
        return pruning.prune(
            self.storage,
            self.summaries(headers),
            headers,
            policy,
            group_of=group_of,
            dry_run=dry_run,
            protect_newest=protect_newest,
            protect=protect,
            within_task=within_task,
            workers=self.options.workers,
        )

    def gc(self, **kwargs) -> gc.GcReport:
        """Garbage-collect unreferenced blobs (see :func:`gc.collect` for the options).

        This store's own writer session ends first if no save is running (its lease would
        keep what it uploaded, e.g. the blobs of checkpoints it just deleted; a dry run too, to
        report what a real run reclaims); the next save starts a new one."""
        self._writer.lease.close()
        return gc.collect(self.storage, workers=self.options.workers, **kwargs)

    def usage(self, headers: Sequence[ManifestHeader], by: str = "step") -> usage.Usage:
        """Logical and physical bytes of the checkpoints of ``headers``, grouped ``by``.

        A damaged checkpoint (its manifest does not parse) is not counted: its key is listed in
        ``damaged`` instead of failing the whole report."""

        def read(key: str):
            try:
                return self.read(key)
            except ManifestError:
                return key

        found = self.read_many_with(read, [h.key for h in headers])
        good = [m for m in found if isinstance(m, Manifest)]
        damaged = sorted(k for k in found if isinstance(k, str))
        return usage.usage(self.storage, good, by, damaged=damaged)


def same_content(a: Manifest, b: Manifest) -> bool:
    """Whether two checkpoints hold the same files and directories (paths, sizes, modes and
    bytes), whatever their metadata, scope or date."""
    return _content(a) == _content(b)


def _content(m: Manifest) -> tuple:
    """What makes two checkpoints the same content: paths, sizes, modes and bytes (hashes)."""
    files = tuple(
        (f.path, f.size, f.mode & 0o7777, f.digest or tuple(c.blob for c in f.chunks))
        for f in sorted(m.files, key=lambda f: f.path)
    )
    return files, tuple(sorted(m.dirs))
