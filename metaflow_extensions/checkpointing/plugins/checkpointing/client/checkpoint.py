"""Browse, load and upload checkpoints from outside a task: ``from metaflow import Checkpoint``.

Checkpoints of runs are found through Metaflow's own objects: a pathspec (``"Flow"``,
``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"``) or a client object locates the
flow's checkpoint store (from the run's metadata) and only checkpoints of runs visible in the
current Metaflow namespace are listed (``namespace(None)`` lists all).  Named checkpoints saved
outside any task (``Checkpoint().save(path, name="resnet50")``) live in the store's library and
are addressed by name: a bare name resolves among the versions published from the current
namespace or promoted to it (:meth:`Checkpoint.promote`), ``name@<version>`` pins a version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import IO, Any, Callable, Optional, Union

from ..common import alias
from ..common.reference import CheckpointReference
from ..core import promotions, retention
from ..core.download import remove_dead_staging
from ..core.layout import MANIFESTS_PREFIX, library_prefix, split_manifest_url
from ..core.manifest import Manifest, is_manifest_key, parse_key
from ..core.policies import sort_key
from ..core.retention import numeric
from ..core.scan import holds_data
from ..core.scope import DEFAULT_NAME, library_scope
from ..core.store import CheckpointStore
from ..core.summary import damaged
from ..core.tempnames import STAGING_PREFIX
from ..core.transfer import Progress
from ..core.verify import VerifyReport
from ..errors import CheckpointConfigError, CheckpointNotFound, ManifestError
from ..task.context import TaskContext
from .locate import default_root, locate, parse_target

Where = Union[dict, Callable[[CheckpointReference], bool], None]


class Checkpoint:
    """Checkpoints of flows, runs, steps and tasks, and named checkpoints, from anywhere.

    Inside a ``@checkpoint`` task, and in any process it starts (``torchrun`` workers,
    ``subprocess`` children) or code without access to ``current`` (framework callbacks),
    ``Checkpoint()`` saves, lists and loads in that task's scope exactly as
    ``current.checkpoint`` does.  Elsewhere (a notebook, a script) it browses runs and saves
    named checkpoints.

    Parameters
    ----------
    root : str, optional
        Checkpoint store root (path or URL).  Default: the store a run's tasks recorded, else
        ``METAFLOW_CHECKPOINT_ROOT``, else ``<default datastore root>/mf.checkpointing``.  Giving
        a root inside a task makes this a plain client of that store.
    temp_dir_root : str, optional
        Parent of the directory ``init_dir=True`` creates (default: the task's
        ``temp_dir_root``, else the system temp dir).
    init_dir : bool
        Create a fresh empty :attr:`directory` for this object (removed by :meth:`close` or at
        the end of a ``with`` block).

    Examples
    --------
    In a subprocess of a ``@checkpoint`` task (e.g. rank 0 of ``torchrun``)::

        with Checkpoint(init_dir=True) as ckpt:
            torch.save(model.state_dict(), os.path.join(ckpt.directory, "model.pt"))
            ckpt.save(metadata={"step": step})
    """

    def __init__(
        self,
        root: Optional[str] = None,
        temp_dir_root: Optional[str] = None,
        init_dir: bool = False,
    ):
        self._root = root
        self._stores: dict[str, CheckpointStore] = {}
        self._task = TaskContext.from_env() if root is None else None
        self._own_dir: Optional[str] = None
        # Recorded as the origin of the named checkpoints this object publishes (CLI: "cli").
        self._origin = "client"
        if init_dir:
            parent = temp_dir_root or (self._task.temp_dir_root if self._task else None)
            if parent:
                os.makedirs(parent, exist_ok=True)
            self._own_dir = tempfile.mkdtemp(prefix="mfckpt-", dir=parent)
        self._runtime = self._task.runtime(self.directory) if self._task else None

    @property
    def directory(self) -> Optional[str]:
        """The local directory :meth:`save` saves by default: the one ``init_dir=True``
        created, else the task's ``current.checkpoint.directory``; None outside a task."""
        if self._own_dir:
            return self._own_dir
        return self._task.directory if self._task else None

    def close(self) -> None:
        """Remove the directory ``init_dir=True`` created (a ``with`` block does this)."""
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ stores
    def _store(self, url: Optional[str] = None) -> CheckpointStore:
        from ..common.settings import store_for_url

        url = url or self._root or default_root()
        if url not in self._stores:
            self._stores[url] = store_for_url(url)
        return self._stores[url]

    def _references(self, store: CheckpointStore, headers: list) -> list[CheckpointReference]:
        summaries = store.summaries(headers)
        return [
            CheckpointReference.from_summary(
                h, summaries[h.key], store.url, store.storage.full_url(h.key)
            )
            for h in headers
        ]

    # ------------------------------------------------------------------ list
    def list(
        self,
        target: Any = None,
        *,
        name: Optional[str] = None,
        step: Optional[str] = None,
        run: Optional[str] = None,
        task: Optional[str] = None,
        foreach: Optional[str] = None,
        attempt: Optional[int] = None,
        latest_only: bool = False,
        where: Where = None,
        order_by: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> list[CheckpointReference]:
        """Committed checkpoints, newest first (or ordered by a metadata field).

        A checkpoint whose manifest cannot be parsed (truncated, tampered with, written by a
        newer release) is listed too, flagged ``damaged=True`` with the reason in ``error``
        (see :class:`CheckpointReference`); it never hides the others.  Delete it with
        :meth:`delete`.

        Parameters
        ----------
        target : str or metaflow client object, optional
            ``"Flow"``, ``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"`` or a
            ``Flow``/``Run``/``Step``/``Task`` object.  None lists the named checkpoints saved
            outside any task (``Checkpoint().save``, ``metaflow checkpoint upload``).
        name : str, optional
            Only this checkpoint name (series).
        step, run, task : str, optional
            Only checkpoints of this step, run id or task id (narrow a ``"Flow"`` target).
        foreach : str, optional
            Only this foreach split, e.g. ``"3"`` or ``"3.0"`` (``"_"``: outside any foreach).
        attempt : int, optional
            Only checkpoints written by this attempt.
        latest_only : bool
            Only checkpoints saved with ``latest=True``.
        where : dict or callable, optional
            Only checkpoints whose metadata has these values (dict), or for which
            ``where(reference)`` is true.
        order_by : str, optional
            Order by this numeric metadata field, ascending; ``"-field"`` for descending.
            Checkpoints without the field come last.  ``created_on``, ``size``, ``attempt``
            and ``files_count`` order by the reference's own field unless the metadata has
            one of that name.  Default: newest first.
        limit : int, optional
            At most this many.

        Raises
        ------
        CheckpointNotFound
            Unknown flow or run.
        CheckpointScopeError
            The run is not visible in the current namespace.
        """
        if self._runtime is not None and target is None:
            # In a task: this task's checkpoints, as current.checkpoint.list() returns them.
            refs = self._runtime.list(name=name, attempt=attempt)
            refs = [r for r in refs if not latest_only or r.latest]
        else:
            refs = self._listed(target, name, step, run, task, foreach, attempt, latest_only)
        refs = _filter(refs, where)
        if order_by:
            refs = _ordered(refs, order_by)
        return refs[:limit] if limit is not None else refs

    def _listed(
        self, target, name, step, run, task, foreach, attempt, latest_only
    ) -> list[CheckpointReference]:
        """Committed checkpoints under ``target`` (or the named ones), newest first."""
        store, headers = self._headers(target, name, step, run, task, foreach, attempt, latest_only)
        return self._references(store, headers)

    def _headers(
        self,
        target: Any,
        name: Optional[str] = None,
        step: Optional[str] = None,
        run: Optional[str] = None,
        task: Optional[str] = None,
        foreach: Optional[str] = None,
        attempt: Optional[int] = None,
        latest_only: bool = False,
    ) -> tuple[CheckpointStore, list]:
        """The store and the headers of the committed checkpoints :meth:`list` returns for
        these arguments (keys only: no manifest is read), newest first."""
        if target is None:
            store = self._store()
            prefixes = [library_prefix()]
            runs = None
        else:
            t = parse_target(target)
            located = locate(t, self._root)
            store, prefixes, runs = self._store(located.root), located.prefixes, located.runs
            flow, step = t.flow, t.step or step
            run, task = t.run or run, t.task or task
        headers = []
        for prefix in prefixes:
            for h in store.headers(
                prefix, name=name, run=run, task=task, attempt=attempt, latest_only=latest_only
            ):
                s = h.scope
                if target is not None and (
                    s.flow != flow
                    or (step is not None and s.step != step)
                    or (runs is not None and s.run not in runs)
                ):
                    continue
                if target is None and step is not None and s.step != step:
                    continue
                if foreach is not None and s.foreach != str(foreach):
                    continue
                headers.append(h)
        # One task's checkpoints in the order its retry sees them (attempt, then its task
        # clock), as current.checkpoint.list() does; across tasks, by date.
        headers.sort(key=sort_key(within_task=task is not None), reverse=True)
        return store, headers

    def best(
        self, target: Any = None, *, metric: str, mode: str = "min", **filters: Any
    ) -> CheckpointReference:
        """The checkpoint with the lowest (``mode="min"``) or highest (``"max"``) ``metric``.

        ``target`` and ``filters`` are those of :meth:`list`.  Checkpoints without the metric
        are ignored.

        Raises
        ------
        CheckpointNotFound
            If no checkpoint has a numeric ``metric`` in its metadata.
        """
        if mode not in ("min", "max"):
            raise CheckpointConfigError("mode=%r: use 'min' or 'max'." % (mode,))
        refs = self.list(target, order_by=("-" if mode == "max" else "") + metric, **filters)
        if not refs or _metric(refs[0], metric) is None:
            seen = sorted({k for r in refs for k in r.metadata})
            raise CheckpointNotFound(
                "No checkpoint of %s has a numeric metadata field %r (fields seen: %s)."
                % (_describe(target), metric, ", ".join(seen) or "none")
            )
        return refs[0]

    # ------------------------------------------------------------------ one checkpoint
    def get(self, reference: Any) -> CheckpointReference:
        """A fresh reference from any spelling of one: a reference or its ``key``/``url``, a
        task (pathspec or object; its latest checkpoint), a name (``"resnet50"``, or
        ``"resnet50@<version id>"``) saved outside any task, or an alias of a target:
        ``"Flow/run@last"``, ``"Flow/run/step@best:val_loss"``, ``"Flow@best:accuracy:max"``.

        Raises
        ------
        CheckpointNotFound
            If there is no such checkpoint.
        CheckpointConfigError
            If ``reference`` is not a reference in any of these forms.
        """
        store, manifest = self._resolve(reference)
        return CheckpointReference.from_manifest(
            manifest, store.url, store.storage.full_url(manifest.key)
        )

    def _manifest(self, reference: Any) -> Manifest:
        """The full manifest of a checkpoint (every file with its blobs; for tools)."""
        return self._resolve(reference)[1]

    def load(
        self,
        reference: Any,
        path: Optional[str] = None,
        *,
        force: bool = False,
        progress: Optional[Progress] = None,
    ) -> str:
        """Download a checkpoint into the directory ``path``; return its absolute path.

        In a task (or a process it started), this is ``current.checkpoint.load()``: ``path``
        defaults to :attr:`directory`, which then holds exactly the checkpoint, and
        ``reference`` may also be an alias (``"last"``, ``"best:val_loss"``).

        Parameters
        ----------
        reference : any
            Any form accepted by :meth:`get`.
        path : str
            Target directory.  Created if absent; if it exists it must be empty unless
            ``force``, in which case same-named files are replaced and others left.  Either
            way the load applies completely or not at all.
        force : bool
            Allow a non-empty target.
        progress : callable, optional
            Called with each number of bytes written.

        Raises
        ------
        CheckpointConfigError
            ``path`` is a file, or a non-empty directory without ``force``, or (with
            ``force``) holds a file where the checkpoint has a directory or the reverse:
            every such path is named and nothing is written.
        StorageError
            Writing ``path`` failed (disk full, quota, permissions); nothing was changed.
        """
        if self._runtime is not None:
            return self._runtime.load(reference, path)
        if path is None:
            raise CheckpointConfigError(
                "load() outside a task needs a target directory: Checkpoint().load(ref, path)."
            )
        target = os.path.abspath(os.fspath(path))
        if os.path.exists(target) and not os.path.isdir(target):
            raise CheckpointConfigError("Cannot load into %s: it is a file." % target)
        # Leftovers of a killed load do not make a directory non-empty (the load removes them).
        if os.path.isdir(target) and not force and holds_data(target):
            raise CheckpointConfigError(
                "Cannot load into %s: the directory is not empty (use force=True, CLI --force, "
                "to overwrite files in it)." % target
            )
        store, manifest = self._resolve(reference)
        if os.path.isdir(target):
            store.load(manifest, target, progress)
            return target
        # A new directory appears only once complete: download beside it, then rename.
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        remove_dead_staging(parent)  # of earlier loads that were killed
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent)
        try:
            store.load(manifest, staging, progress)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def open(self, reference: Any, file: str) -> IO[bytes]:
        """A binary stream over one file of a checkpoint, verified as it is read.

        Only that file's bytes are fetched (a small file is one ranged read).

        Raises
        ------
        CheckpointNotFound
            If the checkpoint has no such file.
        """
        store, manifest = self._resolve(reference)
        return store.open(manifest, file)

    # ------------------------------------------------------------------ named checkpoints
    def save(
        self,
        path: Optional[str] = None,
        metadata: Optional[dict] = None,
        latest: bool = True,
        name: Optional[str] = None,
        progress: Optional[Progress] = None,
    ) -> CheckpointReference:
        """Save a file or directory as a checkpoint and return its reference once committed.

        In a task (or a process it started): a checkpoint of that task, as
        ``current.checkpoint.save()`` makes; ``path`` defaults to :attr:`directory` and
        ``name`` to ``"mfchckpt"``.  Elsewhere: a new version of the named checkpoint
        ``name`` (required, as is ``path``); content identical to the newest version is not
        saved again: that version is returned, with ``stats["reused"]`` true and 0 bytes
        uploaded.  Flow steps load it with ``current.checkpoint.load(name)`` or
        ``@checkpoint(models=[name])``.  The version records its publisher (your user and
        namespace, ``ref["publisher"]``): a bare name resolves to it only in that namespace,
        elsewhere after :meth:`promote` or pinned as ``name@<version>``.

        Raises
        ------
        CheckpointConfigError
            ``path`` does not exist, a required argument is missing, or ``name``/``metadata``
            are invalid (nothing uploaded).
        """
        if self._runtime is not None:
            return self._runtime.save(
                path, metadata=metadata, name=name or DEFAULT_NAME, latest=latest
            )
        if path is None or name is None:
            raise CheckpointConfigError(
                "Outside a @checkpoint task, save() makes a named checkpoint: pass both a path "
                "and a name, e.g. Checkpoint().save('./model.pt', name='resnet50')."
            )
        src = os.path.abspath(os.fspath(path))
        if not os.path.exists(src):
            raise CheckpointConfigError("Cannot save %s: no such file or directory." % src)
        from ..task.models import publisher_here

        store = self._store()
        manifest = store.save(
            src,
            library_scope(name),
            name=name,
            metadata=metadata,
            latest=latest,
            reuse_identical=True,
            progress=progress,
            publisher=publisher_here(self._origin),
        )
        return CheckpointReference.from_manifest(
            manifest, store.url, store.storage.full_url(manifest.key)
        )

    def delete(self, reference: Any) -> CheckpointReference:
        """Delete one checkpoint (its manifest; blobs are reclaimed by garbage collection).

        Returns the reference of the deleted checkpoint.  A checkpoint given by key (a
        reference from :meth:`list`, its ``key`` or ``url``) is deleted by key, whether or not
        its manifest parses: a damaged one (``ref.damaged``) is deleted like any other.

        Raises
        ------
        CheckpointConfigError
            The checkpoint is pinned (unpin it first).
        CheckpointNotFound
            There is no such checkpoint.
        """
        ref = self._deletable(reference)
        self._store(ref.root).delete(ref.key)
        return ref

    def _deletable(self, reference: Any) -> CheckpointReference:
        """What :meth:`delete` would delete: :meth:`get`, except that a checkpoint given by key
        whose manifest does not parse gives its reference flagged ``damaged``."""
        by_key = self._by_key(reference)
        if by_key is None:
            return self.get(reference)
        store, key = by_key
        try:
            header = parse_key(key)
        except ManifestError:
            raise CheckpointNotFound("Cannot delete %r: not a checkpoint key." % key) from None
        url = store.storage.full_url(key)
        try:
            return CheckpointReference.from_manifest(store.read(key), store.url, url)
        except ManifestError as exc:
            return CheckpointReference.from_summary(header, damaged(exc.message), store.url, url)

    # ------------------------------------------------------------------ lifecycle
    def pin(self, reference: Any) -> CheckpointReference:
        """Pin a checkpoint: retention never prunes it and :meth:`delete` refuses it."""
        ref = self.get(reference)
        self._store(ref.root).pin(ref.key)
        return ref

    def unpin(self, reference: Any) -> CheckpointReference:
        """Remove a pin set with :meth:`pin`."""
        ref = self.get(reference)
        self._store(ref.root).pin(ref.key, pinned=False)
        return ref

    def promote(self, reference: Any, to: str) -> CheckpointReference:
        """Let the namespace ``to`` use one version of a named checkpoint by its name.

        A bare name (``"resnet50"``, ``@checkpoint(models=["resnet50"])``) resolves, for a run
        or client in namespace N, to the newest version published from N or promoted to N.
        Promoting is how a version published elsewhere (e.g. uploaded by a user) reaches a
        production namespace.  The promotion is logged (who, when, from which namespace;
        ``metaflow checkpoint show`` prints the log) and pins the version, so retention and
        :meth:`delete` keep it.

        Parameters
        ----------
        reference : str or CheckpointReference
            One exact version: ``"resnet50@<version id or unique prefix>"``, a reference or its
            key.  A bare name is refused: say which version.
        to : str
            The whole namespace, ``"kind:value"``: ``"production:<token>"``, ``"user:bob"``.

        Returns
        -------
        CheckpointReference
            The promoted version.

        Raises
        ------
        CheckpointConfigError
            A bare name, a task's checkpoint (only named checkpoints are promoted) or a
            malformed namespace; nothing is written.

        Examples
        --------
        ::

            Checkpoint().promote("resnet50@1f0c2a", to="production:TrainFlow-0-abcd")
        """
        promotions.validate_namespace(to)
        store, manifest = self._exact_version(reference, "promote", to)
        promotions.promote(store.storage, manifest, to, by=self._actor())
        store.pin(manifest.key)
        return self.get({"key": manifest.key, "root": store.url})

    def unpromote(self, reference: Any, to: str) -> CheckpointReference:
        """Withdraw a promotion made with :meth:`promote` (logged as well).

        The namespace ``to`` then resolves the name to its next trusted version.  The pin that
        :meth:`promote` set is left in place (:meth:`unpin` removes it).

        Raises
        ------
        CheckpointNotFound
            The version is not promoted to ``to``.
        CheckpointConfigError
            As for :meth:`promote`.
        """
        promotions.validate_namespace(to)
        store, manifest = self._exact_version(reference, "unpromote", to)
        promotions.unpromote(store.storage, manifest, to, by=self._actor())
        return self.get({"key": manifest.key, "root": store.url})

    def prune(
        self,
        target: Any = None,
        *,
        keep_last: Optional[int] = None,
        keep_best: Any = None,
        keep_every_steps: Optional[int] = None,
        keep_every_minutes: Optional[float] = None,
        dry_run: bool = False,
        **filters: Any,
    ) -> list[dict]:
        """Delete the checkpoints under ``target`` that no retention rule keeps.

        Rules apply per group of one step, foreach split and name, across the runs under
        ``target`` (per name and publisher's namespace for named checkpoints).  Kept are: the
        newest ``keep_last``, the ``keep_best`` (``"val_loss:min:2"``, or a list of such), the
        first of every ``keep_every_steps`` steps (metadata ``step``) or ``keep_every_minutes``
        minutes, every pinned checkpoint, and each group's newest ``latest=True`` checkpoint
        (what a retry or ``resume`` would load).  ``filters`` are those of :meth:`list`.

        Returns
        -------
        list of dict
            Per group: ``group``, ``kept`` (``{key: [reasons]}``), ``deleted`` (keys) and
            ``warnings`` (e.g. a metric no checkpoint has: that group is left untouched).

        Raises
        ------
        CheckpointConfigError
            No rule given (that would delete everything), or invalid/contradictory rules;
            raised before anything is deleted.
        """
        policy = retention.build(keep_last, keep_best, keep_every_steps, keep_every_minutes)
        if policy.empty:
            raise CheckpointConfigError(
                "prune needs at least one keep rule (keep_last, keep_best, keep_every_steps, "
                "keep_every_minutes); without one every checkpoint would be deleted."
            )
        refs = self.list(target, **filters)
        if not refs:
            return []
        store = self._store(refs[0].root)
        headers = [parse_key(r.key) for r in refs]
        publishers = {r.key: (r.publisher or {}).get("namespace") or "unknown" for r in refs}

        def group_of(h) -> str:
            s = h.scope
            if s.is_library:
                # Per publisher: one namespace's uploads never push out another's versions.
                return "named:%s[%s]" % (h.name, publishers[h.key])
            return "%s/%s[%s]:%s" % (s.flow, s.step, s.foreach, h.name)

        plans = store.prune(headers, policy, group_of=group_of, dry_run=dry_run)
        return [
            {"group": g, "kept": p.keep, "deleted": p.delete, "warnings": p.warnings}
            for g, p in plans
        ]

    def gc(
        self,
        *,
        grace_hours: float = 6.0,
        dry_run: bool = False,
        force: bool = False,
        log: Optional[Callable[[str], None]] = None,
    ) -> dict:
        """Delete stored blobs no checkpoint references any more (after ``delete``/``prune``).

        It is safe to run while flows are saving: saves in flight hold leases it respects,
        whatever the grace period; blobs younger than ``grace_hours`` (a finite number >= 0)
        are kept anyway.  Works on the root of this client (``Checkpoint(root=...)`` or the
        default root).

        Returns
        -------
        dict
            ``manifests``, ``blobs``, ``bytes_total``, ``blobs_referenced``, ``blobs_young``,
            ``blobs_deleted``, ``bytes_reclaimed``, ``pins_deleted``, ``seconds``, ``dry_run``,
            ``parts``, ``blobs_leased`` (kept for saves in flight), ``leases_live``,
            ``leases_deleted``, ``runs_deleted``, ``parts_deleted``.

        Raises
        ------
        CheckpointConfigError
            The root has no checkpoint at all (a wrong root?) and ``force`` is false.
        ManifestError
            A manifest is unreadable: nothing is deleted.
        """
        report = self._store().gc(
            grace_seconds=float(grace_hours) * 3600.0,
            dry_run=dry_run,
            force=force,
            log=log or (lambda msg: None),
        )
        return report.to_json()

    def du(self, target: Any = None, *, by: str = "step", **filters: Any) -> dict:
        """Storage used by the checkpoints under ``target`` (None: every checkpoint of the
        root), grouped ``by`` ``"flow"``, ``"step"``, ``"run"`` or ``"name"``.

        ``logical_bytes`` is what loading them would write; ``physical_bytes`` is the size of
        the distinct blobs they reference (after deduplication and packing).

        Returns
        -------
        dict
            ``rows`` (``group``, ``checkpoints``, ``logical_bytes``, ``physical_bytes``),
            ``total``, and ``stored_blobs``/``stored_bytes`` of the whole root (including blobs
            no checkpoint references, which ``gc`` reclaims).
        """
        from ..core.usage import GROUPINGS

        if by not in GROUPINGS:
            raise CheckpointConfigError(
                "by=%r: use one of %s." % (by, ", ".join(repr(g) for g in GROUPINGS))
            )
        if target is None and not filters:
            store = self._store()
            headers = store.headers(MANIFESTS_PREFIX)
        else:
            refs = self.list(target, **filters)
            store = self._store(refs[0].root if refs else None)
            headers = [parse_key(r.key) for r in refs]
        return store.usage(headers, by).to_json()

    def verify(
        self,
        target: Any = None,
        *,
        deep: bool = False,
        progress: Optional[Callable[[str, int, int], None]] = None,
    ) -> VerifyReport:
        """Check that checkpoints are intact: every manifest parses and every blob it references
        is stored (with ``deep``, also that its bytes match their hashes).  Nothing is modified.

        Parameters
        ----------
        target : str, reference or metaflow client object, optional
            None: the whole store of this client (then also orphaned leases and unreferenced
            blobs are looked for).  ``"Flow"``, ``"Flow/run_id"``, ``"Flow/run_id/step"``,
            ``"Flow/run_id/step/task_id"`` or a client object: the checkpoints :meth:`list`
            would list for it (damaged ones included).  A reference, manifest key or URL: that
            checkpoint.
        deep : bool
            Read every referenced blob back, re-hash it (BLAKE3) and check each packed file's
            digest and each slice's bounds; costs reading every byte once.
        progress : callable, optional
            ``progress(phase, done, total)`` from worker threads; phases ``"manifests"``,
            ``"blobs"`` (counts) and ``"bytes"`` (re-hashed, with ``deep``).

        Returns
        -------
        VerifyReport
            ``ok`` (nothing wrong), ``damaged`` (key, reason, error), ``missing`` (checkpoint
            key -> missing blobs and their files), ``corrupt`` (blobs), ``orphaned_leases``,
            ``unreferenced`` (blobs), counts; ``to_json()`` and ``summary()``.

        Raises
        ------
        CheckpointNotFound
            Unknown flow or run, or no checkpoint at the given key.
        CheckpointScopeError
            The run is not visible in the current namespace.
        StorageError
            A listing of the store failed (never taken as empty).
        """
        from ..core import verify as checker

        by_key = self._by_key(target)
        if target is None:
            store, keys, label = self._store(), None, "the whole store"
        elif by_key is not None:
            store, key = by_key
            keys, label = checker.single(store.storage, key), key
        else:
            store, headers = self._headers(target)
            keys, label = [h.key for h in headers], _describe(target)
        return checker.verify(
            store.storage,
            keys,
            target=label,
            deep=deep,
            options=store.options,
            progress=progress,
        )

    def pause(self, target: Any, reason: Optional[str] = None, *, clear: bool = False) -> str:
        """Ask the tasks of a run (``"Flow/run"``) or one task (``"Flow/run/step/task"``) to
        pause: their ``current.checkpoint.should_pause()`` becomes true within a few seconds.
        ``clear=True`` withdraws the request.  Returns the key of the request object.

        Raises
        ------
        CheckpointConfigError
            ``target`` is not a run or task pathspec.
        CheckpointNotFound, CheckpointScopeError
            Unknown run, or a run outside the current namespace.
        """
        from metaflow import get_namespace

        from ..core import pause as control

        t = parse_target(target)
        if t.run is None or (t.step is not None and t.task is None):
            raise CheckpointConfigError(
                "%r: pause a run ('Flow/run_id') or a task ('Flow/run_id/step/task_id')."
                % (target,)
            )
        store = self._store(locate(t, self._root).root)
        if t.task is None:
            key = control.run_key(t.flow, t.run)
        else:
            key = control.task_key(t.flow, t.run, t.step, t.task)
        if clear:
            control.clear(store.storage, key)
        else:
            control.request(store.storage, key, reason, get_namespace())
        return key

    # ------------------------------------------------------------------ resolution
    def _by_key(self, reference: Any) -> Optional[tuple[CheckpointStore, str]]:
        """The store and manifest key of a reference given by key (a reference or mapping with
        ``key``, a manifest key, a manifest URL), else None; nothing is read."""
        if isinstance(reference, dict):
            key = reference.get("key")
            if not isinstance(key, str):
                raise CheckpointConfigError(
                    "Cannot use %r: a reference mapping needs a 'key' entry." % (reference,)
                )
            return self._store(reference.get("root")), key
        if not isinstance(reference, str):
            return None
        text = reference.strip()
        if is_manifest_key(text):
            return self._store(), text
        url = split_manifest_url(text)
        if url is not None and is_manifest_key(url[1]):
            return self._store(url[0]), url[1]
        return None

    def _resolve(self, reference: Any) -> tuple[CheckpointStore, Manifest]:
        by_key = self._by_key(reference)
        if by_key is not None:
            store, key = by_key
            return store, store.read(key)
        pathspec = getattr(reference, "pathspec", None)
        if isinstance(pathspec, str):
            return self._latest_of(pathspec)
        if not isinstance(reference, str) or not reference.strip():
            raise CheckpointConfigError(_BAD_REFERENCE % (reference,))
        text = reference.strip()
        target, at, role = text.rpartition("@")
        if at and "/" not in role and alias.is_alias(role) and target:
            # "<target>@best:x": a flow/run/step/task, else the versions of a named checkpoint.
            is_run_target = "/" in target or _is_flow(target)
            refs = self.list(target) if is_run_target else self._trusted_versions(target)
            chosen = alias.pick(refs, role, target)
            store = self._store(chosen.root)
            return store, store.read(chosen.key)
        if text.count("/") == 3:
            return self._latest_of(text)
        if "/" not in text:
            return self._named(text)
        raise CheckpointConfigError(_BAD_REFERENCE % (reference,))

    def _latest_of(self, pathspec: str) -> tuple[CheckpointStore, Manifest]:
        t = parse_target(pathspec)
        if t.task is None:
            raise CheckpointConfigError(_BAD_REFERENCE % (pathspec,))
        refs = self.list(t.pathspec)
        if not refs:
            raise CheckpointNotFound("Task %s has no checkpoint." % t.pathspec)
        chosen = max(
            (r for r in refs if r.latest) if any(r.latest for r in refs) else refs,
            key=lambda r: parse_key(r.key).task_order,
        )
        store = self._store(chosen.root)
        return store, store.read(chosen.key)

    # ------------------------------------------------------------------ named checkpoints: trust
    def _reader(self) -> Optional[str]:
        """The namespace names resolve in: the task's in a task, else the client's current
        namespace (None after ``namespace(None)``: any publisher)."""
        if self._task is not None:
            return self._task.scope.namespace
        from ..task.models import reader_namespace

        return reader_namespace()

    def _named(self, text: str) -> tuple[CheckpointStore, Manifest]:
        from ..task.models import is_pinned

        store = self._store()
        return store, store.named(text, None if is_pinned(text) else self._reader())

    def _trusted_versions(self, name: str) -> list[CheckpointReference]:
        """Versions of the named checkpoint ``name`` the reader trusts, newest first (what
        ``name@last`` and ``name@best:metric`` choose among)."""
        refs = self._listed(None, name, None, None, None, None, None, False)
        reader = self._reader()
        if reader is None or not refs:
            return refs
        store = self._store(refs[0].root)
        promoted = promotions.promoted_versions(store.storage, name, reader)
        chosen = [r for r in refs if promotions.trusted(r.publisher, r.version, reader, promoted)]
        if not chosen:
            passed = [
                (parse_key(r.key), r.publisher, "published elsewhere")
                for r in refs
                if r.publisher is not None
            ]
            raise promotions.untrusted_error(name, reader, passed)
        return chosen

    def _exact_version(
        self, reference: Any, verb: str, namespace: str
    ) -> tuple[CheckpointStore, Manifest]:
        """The one version of a named checkpoint ``reference`` designates explicitly."""
        from ..task.models import is_pinned

        if isinstance(reference, str) and "/" not in reference and not is_pinned(reference):
            name = reference.strip().partition("@")[0]
            raise CheckpointConfigError(
                "%s needs one exact version, not the name %r (which version it means depends "
                "on who asks): `metaflow checkpoint %s %s@<version> --to %s`; `metaflow "
                "checkpoint list --named --name %s` lists the versions and their publishers."
                % (verb, reference, verb, name, namespace, name)
            )
        store, manifest = self._resolve(reference)
        if not manifest.scope.is_library:
            raise CheckpointConfigError(
                "Only versions of named checkpoints can be %sd; %s is a checkpoint of the task "
                "%s." % (verb, manifest.key, manifest.scope.pathspec)
            )
        return store, manifest

    def _actor(self) -> dict:
        """Who promotes: this process's user and namespace."""
        from ..task.models import identity

        user, namespace = identity()
        return {"user": user, "namespace": namespace}

    def _promotion_story(self, ref: CheckpointReference) -> dict:
        """Where a version of a named checkpoint is promoted now, and its promotion log."""
        if ref.pathspec is not None:
            return {"promoted_to": [], "promotions": []}
        storage = self._store(ref.root).storage
        return {
            "promoted_to": promotions.promotions_of(storage, ref.name).get(ref.version, []),
            "promotions": promotions.history(storage, ref.name, ref.version),
        }


_BAD_REFERENCE = (
    "%r is not a checkpoint reference: use a reference returned by list()/save(), its 'key' or "
    "'url', a task pathspec 'Flow/run_id/step/task_id', or a checkpoint name such as "
    "'resnet50' or 'resnet50@<version>'."
)


def _is_flow(name: str) -> bool:
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        Flow(name)
        return True
    except MetaflowNotFound:
        return False


def _token() -> str:
    return uuid.uuid4().hex[:8]


def _describe(target: Any) -> str:
    if target is None:
        return "the named checkpoints"
    return str(getattr(target, "pathspec", target))


def _metric(ref: CheckpointReference, field: str) -> Optional[float]:
    return numeric(ref.metadata.get(field))


#: Reference fields ``order_by`` accepts besides metadata fields.
ORDER_FIELDS = ("created_on", "size", "attempt", "files_count")


def _ordered(refs: list[CheckpointReference], order_by: str) -> list[CheckpointReference]:
    descending = order_by.startswith("-")
    field = order_by.lstrip("-")

    def value(r: CheckpointReference):
        v = _metric(r, field)
        if v is None and field in ORDER_FIELDS and field not in r.metadata:
            return r[field]
        return v

    with_value = [r for r in refs if value(r) is not None]
    without = [r for r in refs if value(r) is None]
    with_value.sort(key=value, reverse=descending)  # stable: ties stay newest first
    return with_value + without


def _filter(refs: list[CheckpointReference], where: Where) -> list[CheckpointReference]:
    if where is None:
        return refs
    if callable(where):
        return [r for r in refs if where(r)]
    if isinstance(where, dict):
        return [r for r in refs if all(r.metadata.get(k) == v for k, v in where.items())]
    raise CheckpointConfigError(
        "where=%r: pass a dict of metadata values or a function of a reference." % (where,)
    )
