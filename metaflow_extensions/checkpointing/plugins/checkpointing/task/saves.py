"""Every save one task process makes: blocking, background, sharded and final saves.

Long module: every kind of save of one process shares the task's clock, the commits recorded
for the summary and what a signal stops (the fences and the checkpoint that stays latest);
split by kind, each part would reach into the others' state.

:class:`TaskSaves` dates each save with the task's clock (never before a checkpoint already
known in the task), commits it, applies the step's retention after each commit and remembers
what it committed for the attempt's summary.  ``current.checkpoint.save`` (the runtime), the
session's save after a failure and the interrupt handler's save on a signal all go through the
one instance the session builds; blocking saves run inside :meth:`Interrupts.blocking`, so a
signal arriving during one is handled right after it commits.  Plain saves commit at once with
the process's writer position (:mod:`.ranks`), in a ``@parallel`` gang too; sharded saves
(``sharded=True``) are one checkpoint of every participant (``core/gang.py``), and their waits
stop on a signal or as soon as a participant is marked gone.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Union

from ..common.reference import CheckpointReference, reference_of
from ..core.clock import TaskClock
from ..core.gang import gang_id
from ..core.manifest import Manifest, ManifestHeader, parse_key
from ..core.policies import sort_key
from ..core.retention import Retention
from ..core.scan import is_small
from ..core.scope import DEFAULT_NAME, Scope
from ..core.store import CheckpointStore
from ..errors import CheckpointConfigError, CheckpointException, CheckpointNotFound, StorageError
from ..fmt import describe_error
from .background import BackgroundSaver, SaveHandle, failure, snapshot, source_bytes
from .fence import Fence, SaveAbandoned
from .interrupts import Interrupts
from .ranks import Ranks, mark_exit, sharded_number

#: A blocking save of at most this many bytes (in at most 16 files, no subdirectory) into
#: local stores runs in the task's thread (:meth:`.Interrupts.run`, ``inline``).
INLINE_BYTES = 256 << 10

if TYPE_CHECKING:  # loaded when a task has an upload policy, not in every task
    from .tiered_store import TieredStore
    from .upload_policy import UploadPolicy


class Prepare(Protocol):
    """What completes a background save's snapshot in the background thread (before its
    commit): ``TrainingState.save(..., blocking=False)`` writes its host-memory copy there."""

    nbytes: int  #: bytes :meth:`write` adds (counted in the background budget)
    what: str  #: what is saved, in messages ("save of <what> ('<name>')")
    replaces: frozenset[str]  #: names at the snapshot's top :meth:`write` writes (not copied)

    def write(self, directory: str, abandoned: Callable[[], bool]) -> None:
        """Write into the snapshot's ``directory``; stop (raise) once ``abandoned()``."""


class TaskSaves:
    """The save side of one task process (shared by the runtime, the session and signals).

    Parameters
    ----------
    store : CheckpointStore
        The flow's store (:attr:`flow_store`): where checkpoints are committed, unless
        ``upload`` says the local tier (:attr:`store` then).
    scope : Scope
        The running task's scope.
    directory : str
        The task's checkpoint directory (saved by default, and by the final saves).
    async_budget : int
        Bytes of snapshots background saves may hold at once.
    log : callable
        Where one-line status messages go.
    retention : Retention, optional
        The step's ``keep_*`` rules, applied to a series of this process's writer after each
        commit.
    ranks : Ranks, optional
        Where this process stands among the task's writers (default: rank 0, node 0 of 1).
    sharded_timeout : float
        Seconds a sharded save waits for the others' parts (or participant 0's commit) while
        none of them is marked gone (``METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT``).
    interrupts : Interrupts, optional
        The process's signal handling (blocking saves defer signals through it).
    clock : TaskClock, optional
        The task's clock (shared with the runtime, whose listings teach it).
    guard : callable, optional
        Called before every :meth:`save`; raises to refuse it (in a subprocess, once its task
        has ended).
    upload : UploadPolicy, optional
        ``@checkpoint(upload=, upload_errors=)`` (default: every save commits to ``store``
        and a failure fails it).
    """

    def __init__(
        self,
        store: CheckpointStore,
        scope: Scope,
        directory: str,
        *,
        async_budget: int,
        log: Callable[[str], None] = print,
        retention: Optional[Retention] = None,
        ranks: Optional[Ranks] = None,
        sharded_timeout: float = 600.0,
        interrupts: Optional[Interrupts] = None,
        clock: Optional[TaskClock] = None,
        guard: Optional[Callable[[], None]] = None,
        upload: Optional[UploadPolicy] = None,
    ):
        self.flow_store = store
        self.upload = upload
        # Where saves commit: the local tier with upload="end", else the flow's store.
        self.store = upload.saves_store() if upload is not None else store
        self.scope = scope
        self.directory = directory
        self.log = log
        self.ranks = ranks if ranks is not None else Ranks()
        self._sharded_timeout = sharded_timeout
        self._left = False  # this node's gone marker is written (leave)
        # Dates this process's saves: never before a checkpoint already known in this task.
        self.clock = clock if clock is not None else TaskClock()
        self._retention = retention
        self._async_budget = async_budget
        self._interrupts = interrupts if interrupts is not None else Interrupts(log=log)
        self._background: Optional[BackgroundSaver] = None
        self._manifests: list[Manifest] = []  # committed by this process, for the summary
        self._loaded_key: Optional[str] = None  # the checkpoint loaded at task start
        self._warned: set = set()
        self._guard = guard
        self._reader: Optional[TieredStore] = None
        self._listeners: list[Callable[..., None]] = []  # add_listener (the live card)
        # Saves commit, and log their metrics, on local disks only (no request can hang).
        self._local = store.storage.TYPE == self.store.storage.TYPE == "local"

    @property
    def reader(self) -> Union[CheckpointStore, TieredStore]:
        """What the task reads through (``list``, ``load``): the flow's store, merged with the
        local tier when the upload policy may commit there."""
        if self.upload is None or not (self.upload.at_end or self.upload.warn):
            return self.flow_store
        if self._reader is None:
            from .tiered_store import TieredStore

            self._reader = TieredStore(self.upload)
        return self._reader

    # ------------------------------------------------------------------ saves
    def save(
        self,
        src: str,
        metadata: Optional[dict],
        name: str,
        latest: bool,
        blocking: bool,
        sharded: bool = False,
        prepare: Optional[Prepare] = None,
    ) -> Union[CheckpointReference, SaveHandle]:
        """``current.checkpoint.save()`` (see its docstring), ``src`` already resolved.

        ``prepare`` (background saves only, ``runtime.save_prepared``) completes the snapshot
        of ``src`` in the background thread before its commit."""
        from ..core.manifest import validate_metadata
        from ..core.scope import validate_name

        if self._guard is not None:
            self._guard()
        if sharded:
            if not blocking:
                raise CheckpointConfigError(
                    "save(sharded=True, blocking=False) is not supported: a sharded save "
                    "returns once every participant's part is committed together; pass "
                    "blocking=True, or save without sharded=True to save in the background."
                )
            return self._save_sharded(src, metadata, name, latest)
        if not blocking:
            # Validate now: a bad argument must fail here, not later in the background.
            validate_name(name)
            return self._save_in_background(src, validate_metadata(metadata), name, latest, prepare)
        # In a worker thread: after a signal the wait ends with the time allowed (interrupts.py);
        # a small save into local stores ends within milliseconds, so here (ADR 009).
        return self._interrupts.run(
            lambda fence: self._commit(src, metadata, name, latest, *self._date(), fence=fence),
            inline=self._local and is_small(src, INLINE_BYTES),
        )

    def _commit(
        self,
        src: str,
        metadata: Optional[dict],
        name: str,
        latest: bool,
        created: int,
        seq: int,
        fence=None,
    ) -> CheckpointReference:
        """Save ``src`` dated ``(created, seq)`` and record the commit (blocking and
        background saves alike); through ``fence`` (``interrupts.Fence``) when given, which
        keeps the save from committing once it is abandoned after a signal."""

        def save(**hooks) -> Manifest:
            return self._store_save(src, metadata, name, latest, created, seq, **hooks)

        try:
            manifest = save() if fence is None else fence.commit(save)
        except CheckpointException as exc:
            if self.upload is None or not self.upload.failed_commit(exc):
                raise
            # upload_errors="warn": the checkpoint is kept in the local tier, training goes on.
            tier = self.upload.tier

            def local(**hooks) -> Manifest:
                return self._store_save(
                    src, metadata, name, latest, created, seq, store=tier, **hooks
                )

            manifest = local() if fence is None else fence.commit(local)
            self.upload.kept_locally(manifest.key, exc)
            return self._committed(manifest, fence=fence, store=tier)
        return self._committed(manifest, fence=fence)

    def _store_save(
        self,
        src: str,
        metadata: Optional[dict],
        name: str,
        latest: bool,
        created: int,
        seq: int,
        store: Optional[CheckpointStore] = None,
        **hooks,
    ) -> Manifest:
        """``store.save`` as this process's plain saves make it: dated ``(created, seq)``,
        recording this process's writer position and ranks; ``hooks`` are a fence's.  A full
        local tier (ENOSPC, EDQUOT) is an error naming the tier and how to move it."""
        target = store or self.store
        try:
            return target.save(
                src,
                self.scope,
                name=name,
                metadata=metadata,
                latest=latest,
                created_ms=created,
                seq=seq,
                position=self.ranks.position,
                source=dict(self.ranks.source),
                **hooks,
            )
        except (StorageError, OSError) as exc:
            if self.upload is None or target is self.flow_store or not _disk_full(exc):
                raise
            raise StorageError(
                url=self.upload.root,
                reason="the local checkpoint tier %s is full (%s): free space there, or move "
                "the tier to a larger disk with METAFLOW_CHECKPOINT_LOCAL_TIER or "
                "@checkpoint(temp_dir_root=...)" % (self.upload.root, describe_error(exc)),
            ) from exc

    def note_loaded(self, key: str) -> None:
        """The checkpoint loaded into :attr:`directory` at task start (a final save of the
        unchanged directory would only hide it)."""
        self._loaded_key = key

    def final_save(self, metadata: dict, why: str) -> Optional[CheckpointReference]:
        """The save of :attr:`directory` made on failure or interrupt, unless it would only
        hide a real checkpoint.

        An empty directory, or one holding exactly a checkpoint already committed in this task
        (the one loaded at start, one this process saved, or the newest one, e.g. saved by a
        subprocess) is not committed.  The save starts at once: what it is compared with is
        read once its files are uploaded, right before its commit (after a signal every
        moment counts).  Signals arriving meanwhile are not handled after it: the task is
        already stopping; but once the time allowed after a signal runs out it is abandoned.

        Returns
        -------
        CheckpointReference or None
            The reference, or None when skipped (with one log line saying why).

        Raises
        ------
        SaveAbandoned
            Not committed within the time allowed after a signal (``interrupts.py``).
        """
        from ..core.policies import newest
        from ..core.store import same_content

        skipped: list[str] = []
        latest: list[Optional[ManifestHeader]] = []  # the task's newest for this writer

        def committed_already(candidate: Manifest) -> Optional[Manifest]:
            # Called with what the save would commit, before the commit (no manifest written).
            headers = self._task_headers()
            latest.append(newest(headers, within_task=True, position=self.ranks.position))
            if not candidate.files:
                skipped.append("it holds no file")
                return candidate
            known = list(self._manifests)
            if self._loaded_key is not None:
                try:
                    known.append(self.store.read(self._loaded_key))
                except CheckpointException:
                    pass  # unreadable now: the save goes ahead (it hides nothing readable)
            if latest[0] is not None and latest[0].key not in {m.key for m in known}:
                known.append(self.store.read(latest[0].key))
            same = next((m for m in known if same_content(m, candidate)), None)
            if same is None:
                return None
            skipped.append("it holds exactly checkpoint %s, already committed" % same.key)
            return replace(same)  # the caller marks its stats: not ours to change

        def save(fence) -> Optional[CheckpointReference]:
            created, seq = self._date()
            manifest = fence.commit(
                lambda **hooks: self._store_save(
                    self.directory, metadata, DEFAULT_NAME, True, created, seq, **hooks
                ),
                reuse=committed_already,
            )
            return None if skipped else self._committed(manifest, fence=fence)

        ref = self._interrupts.run(save, deliver=False, what="the final save %s" % why)
        if skipped:
            self.log(
                "[@checkpoint] Skipped the final save %s: %s %s; the retry loads the newest "
                "checkpoint%s."
                % (
                    why,
                    self.directory,
                    skipped[0],
                    " (%s)" % latest[0].key if latest[0] is not None else " (none yet)",
                )
            )
        return ref

    def _save_sharded(
        self, src: str, metadata: Optional[dict], name: str, latest: bool
    ) -> CheckpointReference:
        """This process's part of its ``number``-th sharded save of ``name`` (see
        ``core/gang.py``); the reference once participant 0 has committed the checkpoint.  A
        signal received meanwhile ends the wait (then it is handled, as after any blocking
        save); a failure marks this participant gone, so the others stop waiting for it.

        Always in the flow's store, whatever ``upload`` says: the participants (other
        machines) meet there, and a part left in one machine's local tier would never be
        seen by the others."""
        from ..core.manifest import validate_metadata
        from ..core.scope import validate_name

        if self.ranks.problem is not None:
            raise CheckpointConfigError(self.ranks.problem)
        name, metadata = validate_name(name), validate_metadata(metadata)
        me = self.ranks.participant
        # Per process, not per object: a Checkpoint() made per save must not start at 0 again.
        store = self.flow_store
        number = sharded_number(store.url, self.scope, me, name)
        if me.kind == "rank" and me.world > 1:
            # A worker that ends without a save the others make must not be waited for.
            mark_exit(store.storage, store.url, self.scope, me)
        with self._interrupts.blocking():
            # Participant 0 writes the manifest: its task clock dates it.
            created = self._date()[0] if me.index == 0 else None
            try:
                manifest = store.save_gang(
                    src,
                    self.scope,
                    name=name,
                    metadata=metadata,
                    latest=latest,
                    participant=me,
                    number=number,
                    timeout=self._sharded_timeout,
                    created_ms=created,
                    abort=self._abort,
                )
            except BaseException as exc:
                if me.world > 1:
                    # This save only: a failed save (and those it stopped) must not stop the
                    # attempt's later sharded saves, which every participant may still make.
                    self._mark_gone(
                        (me.kind, me.index),
                        "its sharded save of %r failed: %s" % (name, describe_error(exc)),
                        save=gang_id(self.scope, name, number, me.kind, me.restart, me.world),
                    )
                raise
            ref = self._committed(manifest, prune=me.index == 0, store=store)
        return ref

    def _abort(self) -> Optional[str]:
        """Why a sharded save's wait must stop now: a signal received (and deferred)."""
        received = self._interrupts.received
        return None if received is None else "received %s" % received

    def leave(self, reason: str) -> None:
        """Publish that this process will take part in no more sharded save of the attempt
        (its node's gone marker; only the step's process of a ``@parallel`` node has one), so
        the other nodes' waits stop at once naming it and ``reason``.  Once: the first reason
        (the step's failure) is kept when the task's end says it again."""
        if self.ranks.gang and not self._left:
            self._left = True
            self._mark_gone(("node", self.ranks.position.node), reason)

    def _mark_gone(self, who: tuple[str, int], reason: str, save: Optional[str] = None) -> None:
        from ..core.gang import mark_gone

        try:
            restart = self.ranks.participant.restart
            # In the flow's store, where the other participants look (never the local tier).
            mark_gone(self.flow_store.storage, self.scope, who, reason, restart=restart, save=save)
        except CheckpointException as exc:  # the others then wait for their timeout
            self.log(
                "[@checkpoint] Warning: could not tell the other participants that %s %d is "
                "gone: %s" % (who[0], who[1], exc.message)
            )

    def _save_in_background(
        self, src: str, metadata: dict, name: str, latest: bool, prepare: Optional[Prepare] = None
    ) -> SaveHandle:
        if self._background is None:
            self._background = BackgroundSaver(self._async_budget)
        extra = prepare.nbytes if prepare is not None else 0  # what it will write there
        exclude = prepare.replaces if prepare is not None else frozenset()  # it writes those
        size = source_bytes(src, exclude) + extra
        self._background.reserve(size)
        try:
            created, seq = self._date()  # dated at the snapshot: orders before later saves
            staging, staged, nbytes = snapshot(src, os.path.dirname(self.directory), exclude)
        except BaseException:
            self._background.adjust(-size)
            raise
        nbytes += extra
        self._background.adjust(nbytes - size)  # files may have changed since they were sized

        fence = Fence()  # stops this save if it is abandoned after a signal

        def commit() -> CheckpointReference:
            if prepare is not None:
                # Stops between files once the save is abandoned (its staging goes then).
                prepare.write(staged, lambda: fence.state == Fence.ABANDONED)
            return self._commit(staged, metadata, name, latest, created, seq, fence=fence)

        what = prepare.what if prepare is not None else src
        return self._background.submit(
            "save of %s (%r)" % (what, name), staging, nbytes, commit, fence=fence
        )

    @property
    def retention(self) -> Optional[Retention]:
        """The step's ``keep_*`` rules (None: keep everything)."""
        return self._retention

    # ------------------------------------------------------------------ listeners
    def add_listener(self, callback: Callable[..., None]) -> None:
        """Call ``callback(ref, pruned=keys)`` after each commit of this process (``pruned``:
        the keys the step's retention deleted right after it) and ``callback(ref)`` when the
        status of a checkpoint it committed changes (:meth:`notify`).

        Called in the committing thread (a background save's too), after the commit and its
        pruning; an error in a callback is logged once per process, never the save's error.
        """
        self._listeners.append(callback)

    def notify(self, ref: CheckpointReference, pruned: tuple[str, ...] = ()) -> None:
        """Tell the listeners about ``ref`` (just committed, or its status changed)."""
        for callback in list(self._listeners):
            try:
                callback(ref, pruned=pruned)
            except Exception as exc:  # noqa: BLE001 - a listener never fails a save
                if "listener" not in self._warned:
                    self._warned.add("listener")
                    self.log("[@checkpoint] Warning: %s (the save is committed)." % exc)

    # ------------------------------------------------------------------ pending saves
    def pending(self) -> list[SaveHandle]:
        """Background saves not committed yet."""
        return self._background.pending() if self._background else []

    def flush(self, raise_errors: bool = True) -> None:
        """Wait for every background save; after a signal, only until the time allowed runs
        out: those not committed by then are abandoned (one log line each, never an error).

        Raises
        ------
        CheckpointException
            Naming every one that failed (unless ``raise_errors`` is false: then logged).
        """
        if self._background is None:
            return
        interrupts = self._interrupts
        failed = []
        for handle, error in self._background.wait_all(
            deadline=lambda: interrupts.deadline,
            abandoned=_abandoned_background(interrupts),
        ):
            if isinstance(error, SaveAbandoned):
                interrupts.record_abandoned("the background " + handle.description, error)
            else:
                failed.append((handle, error))
        if failed:
            error = failure(failed)
            if raise_errors:
                raise error
            self.log("[@checkpoint] %s" % error.message)

    def write_summaries(self, ended: Optional[str] = None) -> None:
        """Record the summaries of this attempt's saves in the flow's store (once, when the
        task ends, with how it ``ended``), so listings need not read each manifest.  Each node
        of a ``@parallel`` gang writes its own (the checkpoints its step process committed
        there: with an upload policy, those uploaded; the ending alone when it committed only
        into the tier)."""
        from ..core.summary import write_task_summaries

        manifests = self._manifests
        if self.upload is not None:
            manifests = [m for m in manifests if m.key in self.upload.in_remote]
        write_task_summaries(
            self.flow_store.storage,
            self.scope.task_prefix(),
            self.scope.attempt,
            manifests,
            self.ranks.position,
            ended=ended,
            # Its checkpoints stayed in the tier (upload failed): the ending is still recorded
            # in the flow's store, so a paused task whose upload failed is shown paused.
            ending_only=bool(self._manifests),
        )

    def upload_at_end(self, raise_errors: bool = False) -> list[str]:
        """The end of the task's upload (``UploadPolicy.upload_at_end``), stopping once the
        time allowed after a signal runs out; returns the keys now in the flow's store."""
        import time

        if self.upload is None:
            return []
        interrupts = self._interrupts

        def abort() -> Optional[str]:
            deadline = interrupts.deadline
            if deadline is not None and time.monotonic() >= deadline:
                return "not uploaded within %g s of %s (METAFLOW_CHECKPOINT_INTERRUPT_SECONDS)" % (
                    interrupts.seconds,
                    interrupts.received or "the signal",
                )
            return None

        try:
            keys = self.upload.upload_at_end(
                self.scope,
                self.ranks.position,
                self._retention,
                abort=abort,
                raise_errors=raise_errors,
                hurry=interrupts.received is not None,
            )
        finally:
            if self._listeners:  # the live card: every chosen key's status changed (or not)
                self._notify_chosen()
        if interrupts.received is None:
            self._check_not_vanished(raise_errors)
        stay = [m for m in self._manifests if not m.latest and m.key not in self.upload.in_remote]
        stay = [m for m in stay if m.key not in self.upload.chosen]  # (their failure is logged)
        if stay:
            self.log(
                "[@checkpoint] %d checkpoint(s) this process saved with latest=False stay only in "
                "the local tier %s, e.g. %s: the end of the task uploads what a retry loads and "
                "the newest of each series, not these; their references load only on this "
                "machine (until the tier is swept)." % (len(stay), self.upload.root, stay[0].key)
            )
        return keys

    def _check_not_vanished(self, raise_errors: bool) -> None:
        """The newest ``latest=True`` checkpoint this process saved into the tier must be in
        the flow's store or still in the tier: if something removed it before its upload
        (another task's sweep, a /tmp cleaner), say so, never end silently without it.

        Raises
        ------
        CheckpointNotFound
            With ``raise_errors`` (``upload_errors="fail"`` and the step succeeded).
        """
        upload = self.upload
        mine = [m for m in self._manifests if m.latest]
        tier = upload.existing_tier() if upload is not None and mine else None
        if upload is None or tier is None or not upload.at_end:
            return
        key = mine[-1].key
        if key in upload.in_remote or tier.storage.exists(key):
            return
        error = CheckpointNotFound(
            key=key,
            url=upload.root,
            reason="removed from the local tier before its upload (another task's sweep: "
            "METAFLOW_CHECKPOINT_LOCAL_TIER_DAYS, or a temp-directory cleaner); it is lost",
        )
        if raise_errors and not upload.warn:
            raise error
        self.log("[@checkpoint] Warning: %s" % describe_error(error))

    def _notify_chosen(self) -> None:
        """Tell the listeners the status of each checkpoint of this process the end chose to
        upload: ``uploaded``, or, when its upload failed or was abandoned, its record's
        (``failed``, ``local``), as ``Checkpoint().list()`` says."""
        if self.upload is None:
            return
        chosen = set(self.upload.chosen)
        for manifest in [m for m in self._manifests if m.key in chosen]:
            try:
                state = self.upload.status_of(manifest.key)
            except (CheckpointException, OSError):
                continue  # a record is a hint; the final listing says the status
            self.notify(reference_of(self.flow_store, manifest, status=state))

    # ------------------------------------------------------------------ helpers
    def _date(self) -> tuple[int, int]:
        """``(created_ms, seq)`` of a new save: after every checkpoint known in this task.

        The first save of a process that has not seen the task's checkpoints yet lists them
        once (another process of the task, or an earlier attempt, may have saved)."""
        from ..core.commit import next_seq

        if not self.clock.known:
            self.clock.learn(h.created_ms for h in self._task_headers())
        return self.clock.tick(), next_seq()

    def task_headers(self) -> list[ManifestHeader]:
        """This task's checkpoints as listed now (all attempts and processes), newest first."""
        return self._task_headers()

    def mark(self) -> int:
        """How many checkpoints this process has committed so far (see :meth:`latest`)."""
        return len(self._manifests)

    def latest(
        self, headers: Optional[list[ManifestHeader]], mark: Optional[int] = None
    ) -> Optional[str]:
        """The key of the checkpoint a retry of this process would load now (None: none).

        Chosen as the load policy does for this process's writer, among ``headers`` (a
        listing of the task; None when it failed: then among the checkpoint loaded at start)
        and this process's own commits, or only the first ``mark`` of them (those committed
        before a signal: :meth:`mark` then).  No I/O."""
        from ..core.policies import newest

        own = list(self._manifests)
        later = {m.key for m in own[mark:]} if mark is not None else set()
        known = [h for h in headers or [] if h.key not in later]
        if headers is None and self._loaded_key is not None:
            known.append(parse_key(self._loaded_key))
        listed = {h.key for h in known}
        known += [parse_key(m.key) for m in own[:mark] if m.key not in listed]
        found = newest(known, within_task=True, position=self.ranks.position)
        return found.key if found is not None else None

    def _task_headers(
        self, name: Optional[str] = None, store: Optional[CheckpointStore] = None
    ) -> list[ManifestHeader]:
        """This task's checkpoints (all attempts and processes) in ``store`` (default
        :attr:`store`), newest first as a retry orders them; the task's clock learns their
        dates."""
        headers = (store or self.store).headers(self.scope.task_prefix(), name=name)
        self.clock.observe(h.created_ms for h in headers)
        headers.sort(key=sort_key(within_task=True), reverse=True)
        return headers

    def _committed(
        self,
        manifest: Manifest,
        prune: bool = True,
        fence: Optional[Fence] = None,
        store: Optional[CheckpointStore] = None,
    ) -> CheckpointReference:
        """Record a commit (into ``store``, default :attr:`store`), publish its reference to
        ``fence`` (a save waited for after a signal returns it without waiting for the prune),
        then apply the retention.  The reference names the flow's store (the same key resolves
        there once uploaded) with the checkpoint's status."""
        self._manifests.append(manifest)
        self.clock.observe([manifest.created_ms])
        store = store or self.store
        state = self.upload.committed(store, manifest.key) if self.upload is not None else None
        ref = reference_of(self.flow_store, manifest, **({"status": state} if state else {}))
        if fence is not None:
            fence.publish(ref)
        if prune and manifest.position.is_rank0:  # rank 0's saves; a sharded one once
            self._log_metrics(manifest)
        pruned: tuple[str, ...] = ()
        if prune and self._retention is not None and not self._retention.empty:
            # In the store it committed to: a tier fallback commit (upload="each",
            # upload_errors="warn") is pruned there like the flow's, so keep_last bounds it.
            pruned = self._apply_retention(manifest.name, protect=manifest.key, store=store)
        if self._listeners:
            self.notify(ref, pruned)
        return ref

    def _log_metrics(self, manifest: Manifest) -> None:
        """Add a commit to the task's metrics log (``core/metrics_log.py``), which retention
        never prunes; a failure is one warning per process, never the save's failure."""
        from ..core.metrics_log import record

        rules = self._retention.keep_best if self._retention is not None else ()
        problem = record(self.flow_store.storage, manifest, [(r.metric, r.mode) for r in rules])
        if problem is not None and "metrics log" not in self._warned:
            self._warned.add("metrics log")
            self.log(
                "[@checkpoint] Warning: %s (the checkpoint is committed; the card may not plot "
                "this save)." % problem
            )

    def _apply_retention(
        self, name: str, protect: str, store: Optional[CheckpointStore] = None
    ) -> tuple[str, ...]:
        """Prune this task's checkpoints of series ``name`` (all attempts) after a commit:
        those of the writer of ``protect`` only (``keep_last=3`` keeps three of each rank's,
        three sharded ones; one rank's saves never prune another's).

        ``protect``, the checkpoint just committed, is always kept, and so is the newest
        ``latest=True`` one as a retry orders them (with a background save committing after a
        later blocking one, these differ).  Pruning is best effort: a storage error here is
        logged and the save still counts.

        Not after a signal (looked at before the listing and again before the deletes): a
        stopping task must not spend its time allowed on pruning; the next attempt prunes.
        Returns the keys deleted.  ``store``: where ``protect`` was committed (default
        :attr:`store`).
        """
        store = store or self.store
        deleted: list[str] = []
        if self._skip_pruning(protect):
            return ()
        try:
            writer = parse_key(protect)
            headers = [
                h
                for h in self._task_headers(name=name, store=store)
                if (h.position, h.sharded) == (writer.position, writer.sharded)
            ]
            if self._skip_pruning(protect):
                return ()
            for _, plan in store.prune(
                headers,
                self._retention,
                group_of=lambda h: name,
                protect=[protect],
                within_task=True,
            ):
                deleted += plan.delete
                for warning in plan.warnings:
                    if warning not in self._warned:
                        self._warned.add(warning)
                        self.log("[@checkpoint] Warning: %s" % warning)
        except CheckpointException as exc:
            self.log("[@checkpoint] Warning: pruning old checkpoints failed: %s" % exc.message)
        return tuple(deleted)

    def _skip_pruning(self, protect: str) -> bool:
        """Whether a signal was received (then logged: the commit stands, pruning waits)."""
        received = self._interrupts.received
        if received is None:
            return False
        self.log(
            "[@checkpoint] Committed %s; pruning older checkpoints skipped after %s (the next "
            "attempt's saves prune)." % (protect, received)
        )
        return True


def _abandoned_background(interrupts: Interrupts) -> Callable[[str, bool], SaveAbandoned]:
    """The error of a background save abandoned after a signal, from its description."""
    return lambda what, maybe: interrupts.abandoned_error("the background " + what, maybe)


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a full disk or an exhausted quota."""
    import errno

    seen: set[int] = set()
    cause: Optional[BaseException] = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
