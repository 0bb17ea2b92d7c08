"""``current.huggingface_hub``: Hugging Face Hub snapshots stored once in the checkpoint store.

Long module: the whole of ``current.huggingface_hub`` (snapshot_download, load, load= entries,
the cache look-up by scope, the download directory's life) plus parsing ``load=``.

A snapshot is a version of a named checkpoint of the store's library (see
:attr:`.hub_remote.SnapshotRequest.entry_name`: one name per repo and pattern set), whose
metadata records the repo, the revision asked for and the commit it resolved to.  Its identity
is (repo type, repo id, resolved commit, patterns): the same revision again moves no file bytes
(one small request resolves the revision to its commit), another revision or pattern set is
another version or name.  Which stored versions a task reuses is its ``cache_scope``: versions
published from this namespace by this flow's step (``"checkpoint"``), by any run of this flow
(``"flow"``), or by anyone (``"global"``).  Blobs are content-addressed, so tasks missing the
same snapshot at once store one copy of its bytes; each re-checks just before committing and
returns a version committed meanwhile instead of adding its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..common.reference import CheckpointReference, reference_of
from ..core import loading
from ..core.load_locks import Lock, remove_if_dead
from ..core.manifest import Manifest
from ..core.promotions import publisher_of, publisher_record
from ..core.scope import library_scope
from ..core.store import CheckpointStore, same_content
from ..core.user_dirs import make_dirs, make_temp_dir
from ..errors import CheckpointConfigError, CheckpointNotFound, ManifestError
from ..task.model_loaded import LoadedModels, temp_root
from .hub_remote import (
    HubUnreachable,
    SnapshotRequest,
    check_arguments,
    download,
    listing,
    resolve_commit,
)

CACHE_SCOPES = ("checkpoint", "flow", "global")
DOWNLOAD_PREFIX = "metaflow_hf_download_"


class LoadedPath(str):
    """The local path :meth:`HuggingfaceHub.load` returns: a ``str`` usable directly, and a
    context manager (``with ... as path``) that removes the temporary directory on exit, as the
    reference extension's ``load`` did.  A path you passed is never removed."""

    _cleanup: Optional[Callable[[], None]] = None

    def __enter__(self) -> str:
        return str(self)

    def __exit__(self, *exc: Any) -> None:
        if self._cleanup is not None:
            self._cleanup()


class HuggingfaceHub:
    """``current.huggingface_hub`` in a step decorated with ``@huggingface_hub``.

    ``snapshot_download(repo_id=..., revision=..., allow_patterns=...)`` stores a Hub snapshot
    once and returns its reference; ``load(repo_id, path=None, ...)`` puts one on local disk;
    ``loaded[repo_id]`` / ``loaded.info[repo_id]`` are what ``@huggingface_hub(load=[...])``
    loaded before the step's code.

    Parameters
    ----------
    store : CheckpointStore
        Where snapshots are stored (the step's ``@huggingface_hub(root=)``, else the flow's store).
    namespace, flow, step, pathspec, user : str
        Who runs: the publisher of new versions and, with ``cache_scope``, whose are reused.
    cache_scope : str
        ``"checkpoint"``, ``"flow"`` or ``"global"``.
    temp_dir_root : str, optional
        Parent of temporary directories (downloads, loads without a path).
    log : callable
        Prints one line to the task's output.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        namespace: str,
        flow: str,
        step: str,
        pathspec: str,
        user: Optional[str],
        cache_scope: str = "checkpoint",
        temp_dir_root: Optional[str] = None,
        log: Callable[[str], None] = print,
    ):
        self._store = store
        self._namespace, self._flow, self._step = namespace, flow, step
        self._pathspec, self._user = pathspec, user
        self._cache_scope = cache_scope
        self._log = log
        self._loaded = LoadedModels(temp_dir_root, prefix="metaflow_hf_", owner="@huggingface_hub")
        # Absolute, ~ expanded once (by LoadedModels): the paths handed out must not change
        # meaning if the step changes directory, nor be a directory named "~" below the cwd.
        self._temp_dir_root = temp_root(self._loaded)
        self._temporary: list[str] = []  # load() without a path: removed at the end of the task

    @property
    def loaded(self) -> LoadedModels:
        """``{repo_id: local path}`` of what ``@huggingface_hub(load=[...])`` loaded before the
        step's code; ``.info[repo_id]`` is the reference it came from.  :meth:`load` returns
        its path and is not recorded here (as in the reference extension)."""
        return self._loaded

    # ------------------------------------------------------------------ public API
    def snapshot_download(
        self, repo_id: Optional[str] = None, **kwargs: Any
    ) -> CheckpointReference:
        """Make sure the snapshot is in the store (download it from the Hub once) and return its
        reference (usable as an artifact, by ``@model(load=[...])``, ``current.model.load``,
        ``current.checkpoint.load``).

        Parameters
        ----------
        repo_id : str
            The Hub repository, e.g. ``"google-bert/bert-base-uncased"``.
        **kwargs
            ``revision`` (branch, tag or commit; default ``"main"``), ``allow_patterns``,
            ``ignore_patterns``, ``repo_type`` (``"model"``, ``"dataset"``, ``"space"``),
            ``force_download`` (download again and publish a new version), and other arguments
            of ``huggingface_hub.snapshot_download`` (``token``, ``max_workers``, ...), except
            ``local_dir``/``cache_dir`` (refused: the store is the cache).

        Raises
        ------
        CheckpointConfigError
            Malformed or refused arguments, before any request.
        huggingface_hub.errors.RepositoryNotFoundError, RevisionNotFoundError
            The repo or revision does not exist at ``HF_ENDPOINT`` (the message names both).
        CheckpointNotFound
            The Hub cannot be reached and the store holds no snapshot of that revision.
        CheckpointIntegrityError
            A downloaded file does not match the Hub's hash for it; nothing was stored.
        """
        request = SnapshotRequest.of(repo_id, **kwargs)
        return self._with_fields(self._ensure(request), request)

    def load(
        self, repo_id: Optional[str] = None, path: Optional[str] = None, repo_type: str = "model",
        **kwargs: Any,
    ) -> LoadedPath:  # fmt: skip
        """Put the snapshot on local disk (from the store; on a miss from the Hub, then stored)
        and return its path: ``path`` (created if absent), else a new temporary directory.

        The result is a ``str`` and also a context manager: ``with
        current.huggingface_hub.load(repo_id) as p:`` removes the temporary directory when the
        block ends (as the reference extension did); used as a plain path it lives until the
        task ends.  Arguments as for :meth:`snapshot_download`; ``path`` is checked (not a
        file) before any Hub request (:class:`CheckpointConfigError`).
        """
        request = SnapshotRequest.of(repo_id, repo_type=repo_type, **kwargs)
        if path is not None:
            target = loading.check_target(os.fspath(path), loading.MERGE)  # before any request
        ref = self._with_fields(self._ensure(request), request)
        if path is not None:
            make_dirs(target, "current.huggingface_hub.load(path=%r)" % (path,))
        else:
            what = "@huggingface_hub(temp_dir_root=%r)" % (self._temp_dir_root,)
            target = make_temp_dir(self._temp_dir_root, "metaflow_hf_", what)
            self._temporary.append(target)
        try:
            loading.load(self._store, self._store.read(ref["key"]), target, existing=loading.MERGE)
        except BaseException:
            if path is None:
                shutil.rmtree(target, ignore_errors=True)
            raise
        out = LoadedPath(target)
        if path is None:

            def cleanup() -> None:
                shutil.rmtree(target, ignore_errors=True)

            out._cleanup = cleanup
        return out

    # ------------------------------------------------------------------ @huggingface_hub(load=)
    def load_entries(self, entries: list[tuple[dict, Optional[str]]]) -> None:
        """Load the ``@huggingface_hub(load=[...])`` entries (:func:`parse_load`), after
        checking every target path (none is a file) before any Hub request."""
        for _, path in entries:
            if path is not None:
                loading.check_target(os.fspath(path), loading.MERGE)
        for spec, path in entries:
            self.load_entry(dict(spec), path)

    def load_entry(self, spec: dict, path: Optional[str]) -> None:
        """Load one ``@huggingface_hub(load=[...])`` entry (``spec``: snapshot_download
        arguments) into ``path`` or a temporary directory; recorded in :attr:`loaded`."""
        request = SnapshotRequest.of(**spec)
        if path is not None:
            loading.check_target(os.fspath(path), loading.MERGE)  # before any request
        ref = self._with_fields(self._ensure(request), request)
        target = self._loaded.directory(request.repo_id, path)
        try:
            loading.load(self._store, self._store.read(ref["key"]), target, existing=loading.MERGE)
        except BaseException:
            self._loaded.discard(request.repo_id, target)
            raise
        self._loaded.add(request.repo_id, target, ref)

    def close(self) -> None:
        """Remove every temporary directory (at the end of the task)."""
        self._loaded.close()
        for directory in self._temporary:
            shutil.rmtree(directory, ignore_errors=True)
        self._temporary.clear()

    # ------------------------------------------------------------------ the store
    def _ensure(self, request: SnapshotRequest) -> Manifest:
        """The stored version of ``request``'s snapshot, downloading and storing it on a miss."""
        name = request.entry_name
        check_arguments(request)
        try:
            commit = resolve_commit(request)
        except HubUnreachable as exc:
            found = None if request.force_download else self._find(
                name, lambda md: md.get("revision") == request.revision
            )  # fmt: skip
            if found is None:
                raise CheckpointNotFound(
                    "%s, and the store %s holds no snapshot of %r at revision %r saved by a "
                    "publisher cache_scope=%r trusts." % (
                        exc, self._store.url, request.repo_id, request.revision, self._cache_scope
                    )
                ) from None  # fmt: skip
            self._log(
                "[@huggingface_hub] Warning: %s; using the stored snapshot %s@%s (commit %s) of "
                "revision %r, which may be outdated." % (
                    exc, name, found.id[:8], found.metadata.get("commit"), request.revision
                )
            )  # fmt: skip
            return found

        def same_commit(md: dict) -> bool:
            return md.get("commit") == commit

        if not request.force_download:
            found = self._find(name, same_commit)
            if found is not None:
                self._log(
                    "[@huggingface_hub] %s@%s (commit %s) is in the store: 0 bytes from the Hub."
                    % (request.repo_id, request.revision, commit[:12])
                )
                return found
        try:
            return self._download_and_store(request, commit, same_commit)
        except HubUnreachable as exc:  # e.g. a pinned commit not stored yet, the Hub down
            raise CheckpointNotFound(
                "%s, and the store %s holds no snapshot of %r at commit %s saved by a "
                "publisher cache_scope=%r trusts."
                % (exc, self._store.url, request.repo_id, commit, self._cache_scope)
            ) from None

    def _download_and_store(
        self, request: SnapshotRequest, commit: str, same_commit: Callable[[dict], bool]
    ) -> Manifest:
        name = request.entry_name
        files, total = listing(request, commit)  # the hashes every downloaded file must have
        if not files:
            self._log(
                "[@huggingface_hub] Warning: allow_patterns=%r, ignore_patterns=%r select none "
                "of the %d files of %s at commit %s: storing an empty snapshot."
                % (request.allow_patterns, request.ignore_patterns, total, request.repo_id, commit)
            )
        work, lock = self._work_directory()
        try:
            self._log(
                "[@huggingface_hub] Downloading %s@%s (commit %s) from the Hugging Face Hub."
                % (request.repo_id, request.revision, commit[:12])
            )
            snapshot = download(request, commit, os.path.join(work, "snapshot"), files)

            def committed_meanwhile(candidate: Manifest) -> Optional[Manifest]:
                # Another task stored the same snapshot while this one downloaded: use its
                # version rather than adding an identical one (blobs were not uploaded twice).
                found = self._find(name, same_commit)
                return found if found is not None and same_content(found, candidate) else None

            manifest = self._store.save(
                snapshot,
                library_scope(name),
                name=name,
                metadata=request.metadata(commit),
                reuse=None if request.force_download else committed_meanwhile,
                publisher=publisher_record(self._user, self._namespace, self._pathspec),
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
            lock.release()
        stats = manifest.stats
        self._log(
            "[@huggingface_hub] Stored %s@%s as %s@%s (%d bytes new%s)."
            % (
                request.repo_id,
                request.revision,
                name,
                manifest.id[:8],
                int(stats.get("bytes_uploaded", 0)),
                ", already stored by another task" if stats.get("reused") else "",
            )
        )
        return manifest

    def _work_directory(self) -> tuple[str, Lock]:
        """A new download directory under ``temp_dir_root`` holding a lock while this process
        lives; download directories of processes that died (killed mid-download) are removed
        first."""
        parent = self._temp_dir_root or tempfile.gettempdir()
        make_dirs(parent, "@huggingface_hub(temp_dir_root=%r)" % (self._temp_dir_root,))
        try:
            stale = [e.path for e in os.scandir(parent) if e.name.startswith(DOWNLOAD_PREFIX)]
        except OSError:
            stale = []
        for directory in stale:
            remove_if_dead(directory)
        work = tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX, dir=parent)
        return work, Lock(work, os.urandom(6).hex())

    def _find(self, name: str, match: Callable[[dict], bool]) -> Optional[Manifest]:
        """The newest version of ``name`` whose metadata ``match``es, from a publisher the
        cache scope trusts; None if there is none.  Filtered on the step's summary index
        (metadata and publisher of every version in one read), then only the match is read."""
        headers = self._store.headers(library_scope(name).step_prefix(), name=name)
        summaries = self._store.summaries(headers) if headers else {}
        for header in headers:
            summary = summaries.get(header.key) or {}
            if summary.get("damaged") or not match(summary.get("metadata") or {}):
                continue
            if not self._trusts(publisher_of(summary.get("source"))):
                continue
            try:
                manifest = self._store.read(header.key)
            except (ManifestError, CheckpointNotFound):
                continue  # damaged or deleted meanwhile: not a cache hit
            if match(manifest.metadata) and self._trusts(publisher_of(manifest.source)):
                return manifest
        return None

    def _trusts(self, publisher: Optional[dict]) -> bool:
        """Whether ``cache_scope`` reuses a version published by ``publisher``."""
        if self._cache_scope == "global":
            return True
        origin = ((publisher or {}).get("origin") or "").split("/")
        if origin[0] != self._flow:
            return False
        if self._cache_scope == "flow":
            return True
        return (publisher or {}).get("namespace") == self._namespace and origin[2:3] == [self._step]

    def _with_fields(self, manifest: Manifest, request: SnapshotRequest) -> CheckpointReference:
        """Our reference plus the reference extension's fields for a Hub snapshot."""
        ref = reference_of(self._store, manifest)
        ref.update(
            type="checkpoint",
            source="huggingface",
            repo_id=request.repo_id,
            repo_type=request.repo_type,
            revision=manifest.metadata.get("revision", request.revision),
            commit=manifest.metadata.get("commit"),
        )
        return ref


def parse_load(value: Any, step_name: str) -> list[tuple[dict, Optional[str]]]:
    """Validate ``@huggingface_hub(load=...)`` (no I/O): ``[(snapshot kwargs, path or None)]``.

    Accepted entries: ``"repo_id"``, ``("repo_id", path)``, ``{"repo_id": ..., **kwargs}``,
    ``({"repo_id": ..., **kwargs}, path)``; ``load`` may also be one such string.

    Raises
    ------
    CheckpointConfigError
        Anything else, naming the step, the entry and the accepted forms.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, (str, dict)) else value
    forms = (
        "accepted: 'repo_id', ('repo_id', '/local/path'), {'repo_id': ..., 'revision': ..., "
        "'allow_patterns': [...]}, or ({...}, '/local/path')"
    )
    if not isinstance(items, (list, tuple)):
        raise CheckpointConfigError(
            "Step '%s': @huggingface_hub(load=%r) must be a list of entries (%s)."
            % (step_name, value, forms)
        )
    out: list[tuple[dict, Optional[str]]] = []
    for item in items:
        spec, path = item, None
        if isinstance(item, tuple):
            if len(item) != 2 or not (item[1] is None or isinstance(item[1], str)):
                raise CheckpointConfigError(
                    "Step '%s': @huggingface_hub load entry %r: a tuple is (repo, path) (%s)."
                    % (step_name, item, forms)
                )
            spec, path = item
        if isinstance(spec, str):
            spec = {"repo_id": spec}
        if not isinstance(spec, Mapping) or "repo_id" not in spec:
            raise CheckpointConfigError(
                "Step '%s': @huggingface_hub load entry %r is not recognized (%s)."
                % (step_name, item, forms)
            )
        try:
            SnapshotRequest.of(**dict(spec))
        except CheckpointConfigError as exc:
            raise CheckpointConfigError("Step '%s': %s" % (step_name, exc.message)) from None
        if any(s["repo_id"] == spec["repo_id"] for s, _ in out):
            raise CheckpointConfigError(
                "Step '%s': @huggingface_hub loads %r twice; loaded[...] is keyed by repo_id."
                % (step_name, spec["repo_id"])
            )
        out.append((dict(spec), path))
    return out
