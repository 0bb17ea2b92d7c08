"""The object behind ``current.checkpoint``: the task's public checkpoint API.

Long module: it is the whole public surface of ``current.checkpoint`` (save, list, load, pause,
interrupts and the spellings code written for other ``@checkpoint`` extensions uses), each a
thin delegation; splitting it would split one documented object.

It is built whole by ``builder.build`` (for the task and for its subprocesses alike) from the
task's saves (``saves.TaskSaves``: store, scope, directory, clock, ranks), its pause poller, its
signal handling and its models; it never looks up Metaflow globals or settings itself, so it is
unit-testable and reusable from subprocesses.  Saving is delegated to ``saves.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from ..common.attempts import (
    latest_attempts,
    metaflow_attempt,
    parse_attempt,
    store_filter,
    task_lister,
)
from ..common.reference import (
    FILES,
    UPLOADED,
    CheckpointReference,
    check_storage_format,
    reference_of,
    references,
)
from ..common.refspec import task_target
from ..common.resolver import check_scope, resolve
from ..core import loading
from ..core.layout import step_prefix
from ..core.manifest import Manifest
from ..core.pause import PausePoller
from ..core.policies import Resolution, sort_key
from ..core.scope import DEFAULT_NAME, Scope
from ..core.store import CheckpointStore
from ..core.user_dirs import user_path
from ..errors import CheckpointNotFound, CheckpointPaused
from .background import SaveHandle
from .interrupts import Interrupts
from .saves import Prepare, TaskSaves
from .view import TaskView

Reference = Union[CheckpointReference, dict, str, Any]


def name_and_metadata(name: Any, metadata: Any) -> tuple[Any, Any]:
    """``save``'s name and metadata, whichever order they were passed in.

    The reference extension's ``current.checkpoint.save`` takes ``(path, name, metadata)``,
    earlier releases of this package ``(path, metadata, name)``; the types tell them apart, so
    either positional call saves what its author meant: a dict or None where the name goes,
    with a str or nothing where the metadata goes, is the metadata (and that str the name).
    Anything else is passed on as given, to the usual errors naming the bad argument.  A
    ``None`` name is the default name.
    """
    if (name is None or isinstance(name, dict)) and (metadata is None or isinstance(metadata, str)):
        name, metadata = metadata, name
    return (DEFAULT_NAME if name is None else name), metadata


class CheckpointRuntime:
    """Save, list and load checkpoints of one running task (``current.checkpoint``).

    Parameters
    ----------
    saves : TaskSaves
        The task's saves: its store, scope (namespace, flow, step, foreach path, run, task,
        attempt), checkpoint directory, clock, this process's ranks (``ranks.Ranks``) and log
        come from it.
    pause : PausePoller
        Answers :meth:`should_pause`.
    interrupts : Interrupts
        The process's signal handling (:meth:`on_interrupt` registers with it).
    models : mapping, optional
        Local paths of the models declared with ``@checkpoint(models=[...])``, by name.
    """

    def __init__(
        self,
        saves: TaskSaves,
        *,
        pause: PausePoller,
        interrupts: Interrupts,
        models: Optional[Mapping[str, str]] = None,
    ):
        self._saves = saves
        # What list/load read: the flow's store (merged with the local tier: tiered_store.py).
        self._store: CheckpointStore = saves.reader  # type: ignore[assignment]
        self._scope: Scope = saves.scope
        self._directory: str = saves.directory
        self._log: Callable[[str], None] = saves.log
        self._clock = saves.clock  # shared: what the listings see, saves must date after
        self._ranks = saves.ranks
        self._pause = pause
        self._interrupts = interrupts
        self._models: dict[str, str] = dict(models or {})
        self._info: Optional[CheckpointReference] = None
        self._loaded: Optional[Manifest] = None  # the checkpoint loaded at task start

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

    @property
    def task_identifier(self) -> str:
        """An id shared by every attempt and run of this step and foreach split (the lineage
        ``load_policy="eager"`` continues): 16 hex digits, stable, safe in a file name."""
        s = self._scope
        lineage = "\0".join((s.namespace, s.flow, s.step, s.foreach))
        return hashlib.sha256(lineage.encode("utf-8")).hexdigest()[:16]

    def cleanup(self) -> None:
        """Empty :attr:`directory` (its path stays: ``save()`` and ``load()`` keep using it)."""
        _empty(self._directory)

    def refresh_directory(self) -> None:
        """Make :attr:`directory` empty again (the same path), e.g. before writing a new state
        into it: what was saved from it is committed and unaffected."""
        _empty(self._directory)

    # ------------------------------------------------------------------ save
    def save(
        self,
        path: Optional[str] = None,
        name: Any = DEFAULT_NAME,
        metadata: Any = None,
        latest: bool = True,
        storage_format: str = FILES,
        *,
        blocking: bool = True,
        sharded: bool = False,
    ) -> Union[CheckpointReference, SaveHandle]:
        """Save a directory or file as a checkpoint and return its reference.

        A plain save (the default) commits at once from whichever process calls it, in a
        ``@parallel`` gang too: ``if rank == 0: save()`` is a checkpoint every node and worker
        loads on retry, and a process that saves its own state gets its own back.

        Parameters
        ----------
        path : str, optional
            Directory or file to save; defaults to :attr:`directory`.
        name : str
            Series name; several series can live in one task.  Default ``"mfchckpt"``.
        metadata : dict, optional
            JSON-serialisable metadata stored with the checkpoint (at most 64 KiB as JSON).
            The positional order is the reference extension's, ``save(path, name, metadata)``;
            ``save(path, metadata, name)`` (this package's earlier order) binds the same: a
            dict or None second is the metadata, a str the name (:func:`name_and_metadata`).
        latest : bool
            Whether this checkpoint may be loaded automatically on retry / resume.
        blocking : bool
            ``False``: return a :class:`SaveHandle` as soon as the files are snapshotted (an
            in-kernel copy beside :attr:`directory`); hashing, upload and commit continue in the
            background, in order.  The task waits for them before it finishes and fails if
            one fails.  Not with ``sharded=True``.
        sharded : bool
            ``True``: this process's ``path`` is its part of one checkpoint of every
            participant, committed only once all parts are stored and returned on every
            participant then.  Participants are the nodes of a ``@parallel`` gang (from the
            step, or a process it started without ``RANK``), or the ``torchrun`` ranks
            (``RANK`` of ``WORLD_SIZE``); elsewhere a group of one (commits at once).  Every
            participant must call it the same number of times per name.  On retry each loads
            its own part (``load(..., all_ranks=True)`` every part, under ``rank-<i>/``).  A
            participant that fails or is interrupted stops the others' wait at once, naming it;
            one that is alive but never saves makes them give up after
            ``METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT`` seconds (nothing is committed).
        storage_format : str
            ``"files"`` (default) or ``"tar"``, accepted for code written for other
            ``@checkpoint`` extensions: either way the files are stored one by one, each
            verified when loaded (a ``"tar"`` save loads back as the same files).

        Returns
        -------
        CheckpointReference or SaveHandle
            Picklable reference (a dict with attribute access); store it as an artifact and
            ``load()`` it in a later step or run.  Returned only once the checkpoint is
            committed.  With ``blocking=False``, a handle whose ``wait()`` returns it.
        """
        check_storage_format(storage_format)  # before anything is read
        name, metadata = name_and_metadata(name, metadata)
        src = self._directory if path is None else user_path(path)  # ~ is home, as in a shell
        return self._saves.save(src, metadata, name, latest, blocking, sharded)

    def _for_this_rank(self, manifest: Manifest, all_ranks: bool = False) -> Manifest:
        """A sharded checkpoint loads as this process's part by default: its node's of one
        sharded by nodes, its rank's of one sharded by ``torchrun`` ranks, every part when it
        has no rank of that kind.

        Raises
        ------
        CheckpointNotFound
            The checkpoint has no part for this process (made by a smaller gang, loaded by
            ``resume``/``eager`` or by reference): saying so and how to load every part.
        """
        from ..core import gang

        if all_ranks or not gang.is_gang(manifest):
            return manifest
        by = gang.sharded_by(manifest)
        index = self._ranks.shard_of(by)
        if index is None:
            return manifest
        if not gang.has_part(manifest, index):
            parts = manifest.source.get("ranks")
            raise CheckpointNotFound(
                "Checkpoint %s is sharded in %s parts (one per %s) and has no part for this "
                "process (%s %d): nothing of it was loaded. To re-shard it, load every part "
                "with load(ref, all_ranks=True) (under rank-<i>/)."
                % (manifest.key, parts if type(parts) is int else "several", by, by, index)
            )
        return gang.shard(manifest, index)

    def pending(self) -> list[SaveHandle]:
        """Background saves not committed yet."""
        return self._saves.pending()

    def flush(self, raise_errors: bool = True) -> None:
        """Wait for every background save.

        Raises
        ------
        CheckpointException
            Naming every failed save and its error (its ``failures`` attribute lists them);
            unless ``raise_errors`` is false: then it is logged.
        """
        self._saves.flush(raise_errors)

    # ------------------------------------------------------------------ interruption, pause
    def on_interrupt(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the task receives SIGTERM or SIGINT, before pending saves
        are finished (and before the final save of ``@checkpoint(save_on_interrupt=True)``):
        write the state you want saved into :attr:`directory` there, or save it yourself."""
        self._interrupts.add_callback(callback)

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

    # ------------------------------------------------------------------ list
    def list(
        self,
        name: Optional[str] = None,
        task: Any = None,
        attempt: Union[int, str, None] = None,
        within_task: bool = True,
        full_namespace: Optional[bool] = None,
    ) -> list[CheckpointReference]:
        """Checkpoints of this step in this task's namespace, newest first.

        Parameters
        ----------
        name : str, optional
            Only checkpoints of this series name.
        task : str or metaflow.Task, optional
            Only checkpoints written by this task (pathspec ``Flow/run/step/task`` or object),
            and only by its latest attempt unless ``attempt`` says otherwise: the running
            attempt for the running task; for another task the one Metaflow recorded last (a
            ``Task`` made with ``attempt=N``: N), else the highest among its checkpoints.
        attempt : int or "all", optional
            Only checkpoints written by this attempt; ``"all"``: every attempt.  Without
            ``task``, no ``attempt`` lists every attempt of the running task.
        within_task : bool
            Only checkpoints of the running task (default).  ``False`` lists every task and run
            of this step in the namespace, every attempt.
        full_namespace : bool, optional
            Another spelling of ``within_task=False`` used by existing code; with ``task``,
            every task and run of that task's step.

        Another task (``task`` any but the running one) is listed exactly as
        ``Checkpoint().list(task=...)`` lists it from a notebook: its errors, its stores, a
        ``resume`` clone's origin, a ``@parallel`` worker's own saves.

        Raises
        ------
        CheckpointConfigError
            ``task`` is not a task, or ``attempt`` is not a number, ``"all"`` or None.
        CheckpointNotFound, CheckpointScopeError
            Another task that does not exist, or is not in the current namespace.
        """
        selected = parse_attempt(attempt)
        if full_namespace:
            within_task = False
        scope = self._scope
        flow, step, run, task_id = scope.flow, scope.step, None, None
        t = task_target(task) if task is not None else None
        lister = task_lister()
        if t is not None and t.pathspec != scope.pathspec and lister is not None:
            # Another task: exactly what Checkpoint().list(task=...) answers from a notebook
            # (its namespace and existence checks, its stores, a resumed task's origin).
            return lister(task=task, name=name, attempt=attempt, full_namespace=not within_task)
        if t is not None:
            flow, step = t.flow, t.step
            if within_task:
                run, task_id = t.run, t.task
        elif within_task:
            run, task_id = scope.run, scope.task
        headers = self._store.headers(
            step_prefix(scope.namespace, flow, step),
            name=name,
            run=run,
            task=task_id,
            attempt=store_filter(selected),
        )
        if t is not None and within_task and selected is None:
            headers = latest_attempts(headers, lambda p: self._latest_attempt(p, task))
        ours = [h for h in headers if h.scope.task_prefix() == scope.task_prefix()]
        self._clock.observe(h.created_ms for h in ours)
        # Newest first as policies.newest orders them: one task's as its retries do, so that
        # list()[0] and load("last") are what a retry would load.
        headers.sort(key=sort_key(within_task=task_id is not None), reverse=True)
        # How each attempt ended, as Checkpoint().list() says it (a retry lists attempt 0's
        # as "failed"); this running attempt has no ending yet (None) and is not looked up:
        # a first attempt listing its own checkpoints reads nothing more than before.
        from ..core.summary import endings

        running = (scope.task_prefix(), scope.attempt)
        ended = [h for h in headers if (h.scope.task_prefix(), h.scope.attempt) != running]
        return references(
            self._store,
            headers,
            status=self._statuses(headers),
            task_status=endings(self._store.storage, ended) if ended else None,
        )

    def _latest_attempt(self, pathspec: str, task: Any) -> Optional[int]:
        """The attempt ``list(task=...)`` lists: a ``Task`` object's own (``Task(p,
        attempt=N)``: N), else the running attempt for this task, else Metaflow's latest (None:
        the highest among the task's checkpoints)."""
        told = None if isinstance(task, str) else metaflow_attempt(task)
        if told is None and pathspec == self._scope.pathspec:
            return self._scope.attempt
        return told if told is not None else metaflow_attempt(task)

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
            Any spelling of a reference (``common/refspec.py``): a reference returned by
            ``save()``/``list()`` (or a dict with its ``"key"``, its key or URL); a task
            (pathspec ``Flow/run/step/task`` or object) whose latest checkpoint to load; the
            name of a checkpoint saved outside any task (``"resnet50"``: the newest version
            published from this task's namespace or promoted to it; ``"resnet50@<version>"``:
            that version, whoever published it; see ``metaflow checkpoint upload``); an alias
            of this task's checkpoints (``"last"``, ``"best:val_loss"``, ``"best:acc:max"``)
            or of a target in this task's namespace (``"Flow/run@last"``,
            ``"Flow@best:acc:max"``, ``"resnet50@best:top1:max"``).
        path : str, optional
            Target directory (created if needed; same-named files are replaced, others left).
            Default: :attr:`directory`, which then holds exactly the checkpoint (its previous
            contents are replaced only once the download has been verified).
        namespace_check : bool
            Refuse checkpoints of another namespace, flow or store (default).  Pass False to
            load one deliberately.  With False, an unpinned name resolves to its newest version
            whoever published it.
        all_ranks : bool
            A sharded checkpoint (``save(sharded=True)``) loads this process's part only
            (``CheckpointNotFound`` if it has none: a bigger gang than the one that saved
            it); ``True`` loads every part, under ``rank-<i>/`` (to re-shard).

        ``"last"`` and ``"best:<metric>"`` alone pick among the checkpoints this process would
        load on retry: its own and the sharded ones if it saved any, else rank 0's and the
        sharded ones (ADR 004).
        """
        existing = loading.REPLACE if path is None else loading.MERGE
        target = self._directory if path is None else loading.check_target(path, existing)
        view = TaskView(
            self._store,
            self._scope,
            other_stores=not namespace_check,
            reader=self._scope.namespace if namespace_check else None,  # None: any publisher
            observe=self._clock.observe,
            position=self._ranks.position,
        )
        store, manifest = resolve(reference, view)
        manifest = self._for_this_rank(manifest, all_ranks)
        if namespace_check:
            check_scope(manifest, self._scope)
        # The managed directory is replaced only once the download is verified (beside it).
        return loading.load(store, manifest, target, existing=existing)

    # ------------------------------------------------------------------ used by the decorator
    def load_initial(self, resolution: Resolution) -> Optional[CheckpointReference]:
        """Load the checkpoint a load policy chose into :attr:`directory`; log what happened."""
        if resolution.seen is not None:  # the policy listed this task: the clock learns it
            self._clock.learn(h.created_ms for h in resolution.seen)
        if resolution.header is None:
            self._log("[@checkpoint] No checkpoint loaded: %s." % resolution.reason)
            return None
        manifest = self._store.read(resolution.header.key)
        try:
            self._loaded = self._for_this_rank(manifest)
        except CheckpointNotFound as exc:  # a bigger gang than the one that saved it
            self._log("[@checkpoint] Warning: %s" % exc.message)
            return None
        loading.load(self._store, self._loaded, self._directory, existing=loading.MERGE)
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
        return reference_of(self._store, manifest, status=self._statuses([manifest])[manifest.key])

    def _statuses(self, headers) -> dict:
        """Each checkpoint's status by key (``"uploaded"`` unless the task has a local tier)."""
        statuses = getattr(type(self._store), "statuses", None)
        if statuses is None:
            return {h.key: UPLOADED for h in headers}
        return statuses(self._store, headers)


def save_prepared(
    checkpoint: Any,
    path: str,
    prepare: Prepare,
    metadata: Optional[dict],
    name: str = DEFAULT_NAME,
    latest: bool = True,
    *,
    storage_format: str = FILES,
    sharded: bool = False,
) -> Optional[SaveHandle]:
    """A background save of ``path`` (snapshotted now, but for ``prepare.replaces``) that
    ``prepare.write`` completes in the background thread before the commit; None if
    ``checkpoint`` is not a task's ``current.checkpoint`` (the caller then saves another way).
    For ``frameworks/``: ``TrainingState.save(..., blocking=False)`` writes its host-memory
    copy of the state there, and the handle is then one of the task's background saves
    (waited for at the end, failing the task if it fails, committed or abandoned after a
    signal).  ``storage_format`` and ``sharded`` are checked as :meth:`CheckpointRuntime.save`
    checks them."""
    if not isinstance(checkpoint, CheckpointRuntime):
        return None
    check_storage_format(storage_format)
    src = os.fspath(path)
    return checkpoint._saves.save(src, metadata, name, latest, False, sharded, prepare=prepare)


def _empty(directory: str) -> None:
    """Remove everything in ``directory`` and leave it there, empty."""
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    os.makedirs(directory, exist_ok=True)
