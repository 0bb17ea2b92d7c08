"""The object behind ``current.checkpoint``.

It is built by the decorator from a store, a scope and a directory, and never looks up Metaflow
globals itself, so it is unit-testable and reusable from subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

from ..common import alias
from ..common.reference import CheckpointReference
from ..core.clock import TaskClock
from ..core.download import remove_dead_staging
from ..core.layout import step_prefix
from ..core.manifest import Manifest, ManifestHeader, is_manifest_key
from ..core.pause import PausePoller
from ..core.policies import Resolution, sort_key
from ..core.retention import Retention
from ..core.scope import DEFAULT_NAME, Scope
from ..core.store import CheckpointStore
from ..core.tempnames import STAGING_PREFIX
from ..errors import (
    CheckpointConfigError,
    CheckpointNotFound,
    CheckpointPaused,
    CheckpointScopeError,
)
from .background import BackgroundSaver, SaveHandle, snapshot, source_bytes
from .background import failure as background_failure

Reference = Union[CheckpointReference, dict, str, Any]


def _pathspec_of(task: Any) -> str:
    """A task pathspec from a string or a Metaflow ``Task`` object."""
    pathspec = getattr(task, "pathspec", task)
    if not isinstance(pathspec, str) or len(pathspec.strip("/").split("/")) != 4:
        raise CheckpointConfigError(
            "task=%r is not a task: pass a Metaflow Task or a pathspec 'Flow/run_id/step/task_id'."
            % (task,)
        )
    return pathspec.strip("/")


class CheckpointRuntime:
    """Save, list and load checkpoints of one running task (``current.checkpoint``).

    Parameters
    ----------
    store : CheckpointStore
        Where checkpoints live.
    scope : Scope
        The running task's scope (namespace, flow, step, foreach path, run, task, attempt).
    directory : str
        The task's checkpoint directory (``current.checkpoint.directory``).
    log : callable, optional
        Where one-line status messages go.
    """

    def __init__(
        self,
        store: CheckpointStore,
        scope: Scope,
        directory: str,
        log: Callable[[str], None] = print,
        retention: Optional[Retention] = None,
    ):
        self._store = store
        self._scope = scope
        self._directory = directory
        self._log = log
        self._retention = retention
        self._warned: set = set()
        self._background: Optional[BackgroundSaver] = None
        self._interrupt_callbacks: list[Callable[[], None]] = []
        self._pause = PausePoller(store.storage, scope)
        self._info: Optional[CheckpointReference] = None
        self._models: dict[str, str] = {}
        self._busy = 0  # blocking saves in progress (a signal then waits for them)
        self._interrupted: Optional[int] = None
        self._handling = False
        self._save_on_interrupt = False
        self._gang: Optional[GangInfo] = None
        self._manifests: list[Manifest] = []  # committed by this process, for the summary
        self._loaded: Optional[Manifest] = None  # the checkpoint loaded at task start
        # Dates this process's saves: never before a checkpoint already known in this task.
        self._clock = TaskClock()

    # ------------------------------------------------------------------ properties
    @property
    def directory(self) -> str:
        """Local directory holding the loaded checkpoint; ``save()`` saves it by default."""
        return self._directory

    @property
    def is_loaded(self) -> bool:
        """True if a checkpoint was loaded into :attr:`directory` when the task started."""
        return self._info is not None

    @property
    def info(self) -> Optional[CheckpointReference]:
        """The checkpoint loaded at task start (``pathspec``, ``attempt``, ``key``, ``name``,
        ``created_on``, ``metadata``, ``url``), or None."""
        return self._info

    @property
    def models(self) -> dict[str, str]:
        """Local paths of the models declared with ``@checkpoint(models=[...])``, by name (the
        file for a model saved from one file, else its directory)."""
        return dict(self._models)

    @property
    def scope(self) -> Scope:
        return self._scope

    # ------------------------------------------------------------------ save
    def save(
        self,
        path: Optional[str] = None,
        metadata: Optional[dict] = None,
        name: str = DEFAULT_NAME,
        latest: bool = True,
        blocking: bool = True,
    ) -> Union[CheckpointReference, SaveHandle]:
        """Save a directory or file as a checkpoint and return its reference.

        Parameters
        ----------
        path : str, optional
            Directory or file to save; defaults to :attr:`directory`.
        metadata : dict, optional
            JSON-serialisable metadata stored with the checkpoint (at most 64 KiB as JSON).
        name : str
            Series name; several series can live in one task.  Default ``"mfchckpt"``.
        latest : bool
            Whether this checkpoint may be loaded automatically on retry / resume.
        blocking : bool
            ``False``: return a :class:`SaveHandle` as soon as the files are snapshotted (an
            in-kernel copy beside :attr:`directory`); hashing, upload and commit continue in the
            background, in order.  The task waits for them before it finishes and fails if
            one fails.

        Returns
        -------
        CheckpointReference or SaveHandle
            Picklable reference (a dict with attribute access); store it as an artifact and
            ``load()`` it in a later step or run.  Returned only once the checkpoint is
            committed.  With ``blocking=False``, a handle whose ``wait()`` returns it.
        """
        from ..core.manifest import validate_metadata
        from ..core.scope import validate_name

        src = self._directory if path is None else os.fspath(path)
        if self._gang is not None:
            return self._save_gang(src, metadata, name, latest, blocking)
        if not blocking:
            # Validate now: a bad argument must fail here, not later in the background.
            validate_name(name)
            metadata = validate_metadata(metadata)
            return self._save_in_background(src, metadata, name, latest)
        with self._saving():
            created, seq = self._date()
            manifest = self._store.save(
                src,
                self._scope,
                name=name,
                metadata=metadata,
                latest=latest,
                created_ms=created,
                seq=seq,
            )
        ref = self._committed(manifest)
        if self._interrupted is not None and not self._busy:
            self._on_signal(self._interrupted, None)  # a signal arrived during this save
        return ref

    def _date(self) -> tuple[int, int]:
        """``(created_ms, seq)`` of a new save: after every checkpoint known in this task.

        The first save of a process that has not seen the task's checkpoints yet lists them
        once (another process of the task, or an earlier attempt, may have saved)."""
        from ..core.commit import next_seq

        if not self._clock.known:
            self._clock.learn(h.created_ms for h in self._task_headers())
        return self._clock.tick(), next_seq()

    def _task_headers(self, name: Optional[str] = None) -> list[ManifestHeader]:
        """This task's checkpoints (all attempts and processes), newest first as a retry
        orders them; the task's clock learns their dates."""
        headers = self._store.headers(self._scope.task_prefix(), name=name)
        self._clock.observe(h.created_ms for h in headers)
        headers.sort(key=sort_key(within_task=True), reverse=True)
        return headers

    def _final_save(self, metadata: dict, why: str) -> Optional[CheckpointReference]:
        """The save of :attr:`directory` made on failure or interrupt, unless it would only
        hide a real checkpoint: an empty directory, or one holding exactly a checkpoint
        already committed in this task (the one loaded at start, one this process saved, or
        the newest one, e.g. saved by a subprocess) is not committed.  Returns the reference,
        or None when skipped (with one log line saying why)."""
        from ..core.store import same_content

        if self._gang is not None:
            return self.save(metadata=metadata)  # every rank must take part in a gang save
        known = list(self._manifests)
        if self._loaded is not None:
            known.append(self._loaded)
        newest = next((h for h in self._task_headers() if h.latest), None)
        if newest is not None and newest.key not in {m.key for m in known}:
            known.append(self._store.read(newest.key))
        skipped: list[str] = []

        def committed_already(candidate: Manifest) -> Optional[Manifest]:
            # Called with what the save would commit, before the commit (no manifest written).
            if not candidate.files:
                skipped.append("it holds no file")
                return candidate
            same = next((m for m in known if same_content(m, candidate)), None)
            if same is None:
                return None
            skipped.append("it holds exactly checkpoint %s, already committed" % same.key)
            return replace(same)  # the caller marks its stats: not ours to change

        with self._saving():
            created, seq = self._date()
            manifest = self._store.save(
                self._directory,
                self._scope,
                metadata=metadata,
                created_ms=created,
                seq=seq,
                reuse=committed_already,
            )
        if skipped:
            self._log(
                "[@checkpoint] Skipped the final save %s: %s %s; the retry loads the newest "
                "checkpoint%s."
                % (
                    why,
                    self._directory,
                    skipped[0],
                    " (%s)" % newest.key if newest is not None else " (none yet)",
                )
            )
            return None
        return self._committed(manifest)

    def _save_gang(
        self, src: str, metadata: Optional[dict], name: str, latest: bool, blocking: bool
    ) -> CheckpointReference:
        if not blocking:
            raise CheckpointConfigError(
                "save(blocking=False) is not supported in @parallel steps: every rank's save "
                "is part of one checkpoint committed together; save with blocking=True."
            )
        gang = self._gang
        number = gang.counts.get(name, 0)
        gang.counts[name] = number + 1
        with self._saving():
            # Rank 0 writes the gang's manifest: its task clock dates it.
            created = self._date()[0] if gang.rank == 0 else None
            manifest = self._store.save_gang(
                src,
                self._scope,
                name=name,
                metadata=metadata,
                latest=latest,
                rank=gang.rank,
                world=gang.world(),
                number=number,
                timeout=gang.timeout,
                created_ms=created,
            )
        return self._committed(manifest)

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Mark a blocking save in progress: a signal arriving now waits until it commits."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    def _for_this_rank(self, manifest: Manifest, all_ranks: bool = False) -> Manifest:
        """In a @parallel rank, a gang checkpoint loads as that rank's shard by default."""
        from ..core import gang

        if self._gang is None or all_ranks or not gang.is_gang(manifest):
            return manifest
        return gang.shard(manifest, self._gang.rank)

    def _committed(self, manifest: Manifest) -> CheckpointReference:
        self._manifests.append(manifest)
        self._clock.observe([manifest.created_ms])
        ref = self._reference(manifest)
        if self._retention is not None and not self._retention.empty:
            self._apply_retention(manifest.name, protect=manifest.key)
        return ref

    def _save_in_background(self, src: str, metadata: dict, name: str, latest: bool) -> SaveHandle:
        from ..common.settings import async_budget

        if self._background is None:
            self._background = BackgroundSaver(async_budget())
        size = source_bytes(src)
        self._background.reserve(size)
        try:
            created, seq = self._date()  # dated at the snapshot: orders before later saves
        except BaseException:
            self._background.adjust(-size)
            raise
        try:
            staging, staged, nbytes = snapshot(src, os.path.dirname(self._directory))
        except BaseException:
            self._background.adjust(-size)
            raise
        self._background.adjust(nbytes - size)  # files may have changed since they were sized

        def commit() -> CheckpointReference:
            manifest = self._store.save(
                staged,
                self._scope,
                name=name,
                metadata=metadata,
                latest=latest,
                created_ms=created,
                seq=seq,
            )
            return self._committed(manifest)

        return self._background.submit("save of %s (%r)" % (src, name), staging, nbytes, commit)

    def pending(self) -> list[SaveHandle]:
        """Background saves not committed yet."""
        return self._background.pending() if self._background else []

    def flush(self, raise_errors: bool = True) -> None:
        """Wait for every background save.

        Raises
        ------
        CheckpointException
            One of them failed (unless ``raise_errors`` is false; then it is logged).
        """
        if self._background is None:
            return
        failed = self._background.wait_all()
        if failed:
            error = background_failure(failed)
            if raise_errors:
                raise error
            self._log("[@checkpoint] %s" % error.message)

    def _write_summary(self) -> None:
        """Record the summaries of this attempt's saves (called once when the task ends), so
        listings need not read each manifest.  Rank 0 writes for a ``@parallel`` gang."""
        from ..core.summary import write_task_summaries

        if self._gang is not None and self._gang.rank != 0:
            return
        write_task_summaries(
            self._store.storage, self._scope.task_prefix(), self._scope.attempt, self._manifests
        )

    # ------------------------------------------------------------------ interruption, pause
    def on_interrupt(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the task receives SIGTERM or SIGINT, before pending saves
        are finished (and before the final save of ``@checkpoint(save_on_interrupt=True)``):
        write the state you want saved into :attr:`directory` there, or save it yourself."""
        self._interrupt_callbacks.append(callback)

    def should_pause(self) -> bool:
        """True once a pause was requested for this run or task (``metaflow checkpoint pause``).

        Cheap enough to call every batch: the store is asked at most every
        ``METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS`` (default 5).
        """
        return self._pause.requested()

    def pause(self, reason: str = "pause requested") -> None:
        """Finish pending saves, then end the task as paused: it is not retried, and
        ``python flow.py resume`` continues from its last checkpoint.  Save first.

        Raises
        ------
        CheckpointPaused
            Always (it ends the step's code).
        """
        self.flush()
        raise CheckpointPaused(
            "Task %s paused (%s); continue with `python <flow>.py resume`."
            % (self._scope.pathspec, reason)
        )

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Signal handler body (installed by the decorator): see ``interrupts.py``."""
        from . import interrupts

        interrupts.handle(self, signum)

    def _apply_retention(self, name: str, protect: str) -> None:
        """Prune this task's checkpoints of series ``name`` (all attempts) after a commit.

        ``protect``, the checkpoint just committed, is always kept, and so is the newest
        ``latest=True`` one as a retry orders them (with a background save committing after a
        later blocking one, these differ).  Pruning is best effort: a storage error here is
        logged and the save still counts.
        """
        from ..errors import CheckpointException

        try:
            headers = self._task_headers(name=name)
            for _, plan in self._store.prune(
                headers,
                self._retention,
                group_of=lambda h: name,
                protect=[protect],
                within_task=True,
            ):
                for warning in plan.warnings:
                    if warning not in self._warned:
                        self._warned.add(warning)
                        self._log("[@checkpoint] Warning: %s" % warning)
        except CheckpointException as exc:
            self._log("[@checkpoint] Warning: pruning old checkpoints failed: %s" % exc.message)

    # ------------------------------------------------------------------ list
    def list(
        self,
        name: Optional[str] = None,
        task: Any = None,
        attempt: Optional[int] = None,
        within_task: bool = True,
        full_namespace: Optional[bool] = None,
    ) -> list[CheckpointReference]:
        """Checkpoints of this step in this task's namespace, newest first.

        Parameters
        ----------
        name : str, optional
            Only checkpoints of this series name.
        task : str or metaflow.Task, optional
            Only checkpoints written by this task (pathspec ``Flow/run/step/task`` or object).
        attempt : int, optional
            Only checkpoints written by this attempt.
        within_task : bool
            Only checkpoints of the running task (default).  ``False`` lists every task and run
            of this step in the namespace.
        full_namespace : bool, optional
            Another spelling of ``within_task=False`` used by existing code.
        """
        if full_namespace:
            within_task = False
        scope = self._scope
        flow, step, run, task_id = scope.flow, scope.step, None, None
        if task is not None:
            flow, run, step, task_id = _pathspec_of(task).split("/")
        elif within_task:
            run, task_id = scope.run, scope.task
        headers = self._store.headers(
            step_prefix(scope.namespace, flow, step),
            name=name,
            run=run,
            task=task_id,
            attempt=attempt,
        )
        ours = [h for h in headers if h.scope.task_prefix() == scope.task_prefix()]
        self._clock.observe(h.created_ms for h in ours)
        # Newest first as policies.newest orders them: one task's as its retries do, so that
        # list()[0] and load("last") are what a retry would load.
        headers.sort(key=sort_key(within_task=task_id is not None), reverse=True)
        summaries = self._store.summaries(headers)
        return [
            CheckpointReference.from_summary(
                h, summaries[h.key], self._store.url, self._store.storage.full_url(h.key)
            )
            for h in headers
        ]

    # ------------------------------------------------------------------ load
    def load(
        self,
        reference: Reference,
        path: Optional[str] = None,
        namespace_check: bool = True,
        all_ranks: bool = False,
    ) -> str:
        """Load a checkpoint into a local directory and return that directory.

        Parameters
        ----------
        reference : CheckpointReference, dict, str or metaflow.Task
            A reference returned by ``save()``/``list()`` (or its ``["key"]``), a task
            (pathspec ``Flow/run/step/task`` or object) whose latest checkpoint to load, or the
            name of a checkpoint saved outside any task (``"resnet50"``: the newest version
            published from this task's namespace or promoted to it; ``"resnet50@<version>"``:
            that version, whoever published it; see ``metaflow checkpoint upload``).
        path : str, optional
            Target directory (created if needed; same-named files are replaced, others left).
            Default: :attr:`directory`, which then holds exactly the checkpoint (its previous
            contents are replaced only once the download has been verified).
        namespace_check : bool
            Refuse checkpoints of another namespace, flow or store (default).  Pass False to
            load one deliberately.  With False, an unpinned name resolves to its newest version
            whoever published it.
        all_ranks : bool
            In a ``@parallel`` step, a checkpoint saved by the gang loads this rank's files
            only; ``True`` loads every rank's, under ``rank-<i>/`` (to re-shard).
        """
        store, manifest = self._resolve_reference(reference, namespace_check)
        manifest = self._for_this_rank(manifest, all_ranks)
        if namespace_check and not manifest.scope.is_library:
            self._check_scope(manifest)
        if path is not None:
            target = os.path.abspath(os.fspath(path))
            if os.path.exists(target) and not os.path.isdir(target):
                raise CheckpointConfigError(
                    "Cannot load into %s: it exists and is not a directory." % target
                )
            store.load(manifest, target)
            return target
        # Download beside the managed directory, then swap: a failed load leaves it unchanged.
        remove_dead_staging(os.path.dirname(self._directory))  # of killed earlier loads
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=os.path.dirname(self._directory))
        try:
            store.load(manifest, staging)
            _empty_directory(self._directory)
            for entry in os.listdir(staging):
                os.replace(os.path.join(staging, entry), os.path.join(self._directory, entry))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._directory

    # ------------------------------------------------------------------ used by the decorator
    def load_initial(self, resolution: Resolution) -> Optional[CheckpointReference]:
        """Load the checkpoint a load policy chose into :attr:`directory`; log what happened."""
        if resolution.seen is not None:  # the policy listed this task: the clock learns it
            self._clock.learn(h.created_ms for h in resolution.seen)
        if resolution.header is None:
            self._log("[@checkpoint] No checkpoint loaded: %s." % resolution.reason)
            return None
        manifest = self._store.read(resolution.header.key)
        self._loaded = self._for_this_rank(manifest)
        self._store.load(self._loaded, self._directory)
        self._info = self._reference(manifest)
        self._log(
            "[@checkpoint] Loaded checkpoint %r (%s, attempt %d, saved %s; %s) into %s"
            % (
                manifest.name,
                manifest.scope.pathspec,
                manifest.scope.attempt,
                manifest.created_on,
                resolution.reason,
                self._directory,
            )
        )
        return self._info

    # ------------------------------------------------------------------ helpers
    def _reference(self, manifest: Manifest) -> CheckpointReference:
        url = self._store.storage.full_url(manifest.key)
        return CheckpointReference.from_manifest(manifest, self._store.url, url)

    def _resolve_reference(
        self, reference: Reference, namespace_check: bool = True
    ) -> tuple[CheckpointStore, Manifest]:
        store = self._store
        if isinstance(reference, dict):
            key = reference.get("key")
            if not isinstance(key, str):
                raise CheckpointConfigError(
                    "Cannot load %r: a reference mapping needs a 'key' entry." % (reference,)
                )
            root = reference.get("root")
            if root and root != store.url:
                if namespace_check:
                    raise CheckpointScopeError(
                        "Checkpoint %s lives in the store %s, but this task uses %s; pass "
                        "namespace_check=False to load it from there." % (key, root, store.url)
                    )
                from ..common.settings import store_for_url

                store = store_for_url(root)
            return store, store.read(key)
        if isinstance(reference, str) and is_manifest_key(reference):
            return store, store.read(reference)
        if isinstance(reference, str) and reference.startswith(store.url + "/"):
            return store, store.read(reference[len(store.url) + 1 :])
        if hasattr(reference, "pathspec") or (
            isinstance(reference, str) and len(reference.strip("/").split("/")) == 4
        ):
            return store, self._latest_of_task(_pathspec_of(reference))
        if isinstance(reference, str) and alias.is_alias(reference):
            refs = self.list()
            return store, store.read(
                alias.pick(refs, reference, "task %s" % self._scope.pathspec).key
            )
        if isinstance(reference, str) and reference and "/" not in reference:
            reader = self._scope.namespace if namespace_check else None  # None: any publisher
            return store, store.named(reference, reader)
        raise CheckpointConfigError(
            "Cannot load %r: pass a reference returned by save() or list(), its 'key', a task "
            "pathspec 'Flow/run_id/step/task_id', or the name of a checkpoint saved outside any "
            "task ('resnet50' or 'resnet50@<version>')." % (reference,)
        )

    def _latest_of_task(self, pathspec: str) -> Manifest:
        flow, run, step, task = pathspec.split("/")
        headers = self._store.headers(
            step_prefix(self._scope.namespace, flow, step), run=run, task=task
        )
        if not headers:
            raise CheckpointNotFound(
                "Task %s has no checkpoint in namespace %s." % (pathspec, self._scope.namespace)
            )
        marked = [h for h in headers if h.latest] or headers
        return self._store.read(max(marked, key=lambda h: h.task_order).key)

    def _check_scope(self, manifest: Manifest) -> None:
        theirs, ours = manifest.scope, self._scope
        if theirs.namespace != ours.namespace:
            raise CheckpointScopeError(
                "Checkpoint %s belongs to namespace %r but this task runs in %r; pass "
                "namespace_check=False to load it anyway."
                % (manifest.key, theirs.namespace, ours.namespace)
            )
        if theirs.flow != ours.flow:
            raise CheckpointScopeError(
                "Checkpoint %s belongs to flow %r, not %r; pass namespace_check=False to load it "
                "anyway." % (manifest.key, theirs.flow, ours.flow)
            )


@dataclass
class GangInfo:
    """This process's place in a ``@parallel`` gang (see ``core/gang.py``)."""

    rank: int
    world: Callable[[], int]  # read when saving: the local control task learns it late
    timeout: float = 600.0
    counts: dict = field(default_factory=dict)


def _empty_directory(path: str) -> None:
    """Remove the contents of ``path`` (the managed checkpoint directory), keeping it."""
    os.makedirs(path, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
