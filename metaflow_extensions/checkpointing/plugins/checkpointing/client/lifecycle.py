"""Keeping a store tidy from the client: ``Checkpoint().delete``, ``pin``, ``unpin``,
``prune``, ``gc``, ``du``, ``verify`` and ``pause`` (a request the tasks of a run see).

They act on the flow's store only: a listing on the machine that ran an ``upload="end"`` task
also shows what only its local tier holds (status ``local``, ``uploading``, ``failed``), but
that is this machine's cache, not the store's; ``prune`` and ``du`` take the ``uploaded``
checkpoints of a listing (``status=`` is not one of their filters)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..common import refspec
from ..common.reference import CheckpointReference, damaged_reference, reference_of
from ..common.refspec import parse_target
from ..core import pruning, retention, summary
from ..core.layout import MANIFESTS_PREFIX, task_prefix_of
from ..core.manifest import parse_key
from ..core.upload_status import UPLOADED
from ..core.verify_report import VerifyReport
from ..errors import CheckpointConfigError, CheckpointNotFound, ManifestError
from .base import ClientBase
from .listing import describe
from .locate import locate


class Lifecycle(ClientBase):
    """``delete``, ``pin``, ``unpin``, ``prune``, ``gc``, ``du``, ``verify`` and ``pause`` of
    :class:`~.checkpoint.Checkpoint`."""

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
            There is no such checkpoint, or the reference is of one only in this machine's
            local tier (not ``"uploaded"``): delete acts on the flow's store only.
        """
        _in_store(reference, "delete")
        ref = self._deletable(reference)
        self._store(ref.root).delete(ref.key)
        return ref

    def _deletable(self, reference: Any) -> CheckpointReference:
        """What :meth:`delete` would delete: :meth:`get`, except that a checkpoint given by key
        whose manifest does not parse gives its reference flagged ``damaged``."""
        by_key = refspec.key_spec(reference)
        if by_key is None:
            return self.get(reference)
        key = str(by_key.key)
        store = self._view().store(by_key.root, key)
        try:
            return reference_of(store, store.read(key))
        except ManifestError as exc:
            return damaged_reference(store, key, exc.message)

    def pin(self, reference: Any) -> CheckpointReference:
        """Pin a checkpoint: retention never prunes it and :meth:`delete` refuses it (one in
        the flow's store: a reference to a checkpoint only in the local tier raises
        CheckpointNotFound, naming its status)."""
        _in_store(reference, "pin")
        ref = self.get(reference)
        self._store(ref.root).pin(ref.key)
        return ref

    def unpin(self, reference: Any) -> CheckpointReference:
        """Remove a pin set with :meth:`pin`."""
        _in_store(reference, "unpin")
        ref = self.get(reference)
        self._store(ref.root).pin(ref.key, pinned=False)
        return ref

    def prune(
        self,
        target: Any = None,
        *,
        keep_last: Optional[int] = None,
        keep_best: Any = None,
        keep_every_steps: Optional[int] = None,
        keep_every_minutes: Optional[float] = None,
        expire_after_days: Optional[float] = None,
        dry_run: bool = False,
        **filters: Any,
    ) -> list[dict]:
        """Delete the checkpoints under ``target`` that no retention rule keeps.

        Rules apply per group of one step, foreach split and name, across the runs under
        ``target`` (per name and publisher's namespace for named checkpoints).  Kept are: the
        newest ``keep_last``, the ``keep_best`` (``"val_loss:min:2"``, or a list of such), the
        first of every ``keep_every_steps`` steps (metadata ``step``) or ``keep_every_minutes``
        minutes, every pinned checkpoint, each group's newest ``latest=True`` checkpoint
        (what a retry or ``resume`` would load), and the newest ``latest=True`` checkpoint of
        every task whose last attempt paused (``current.checkpoint.pause()``: its resume
        point, whatever newer runs saved).  ``filters`` are those of :meth:`list` but
        ``status``: prune acts on the flow's store, never on a machine's local tier.

        ``expire_after_days`` (a positive number, e.g. ``30`` or ``0.5``) deletes every
        checkpoint older than that by the store's clock (its manifest's modification time in
        the store), whatever the keep rules say, except pinned ones, each group's newest
        ``latest=True`` and paused tasks' resume points; alone, it keeps every checkpoint
        younger than that.  A failed task's checkpoints expire like any other.

        Returns
        -------
        list of dict
            Per group: ``group``, ``kept`` (``{key: [reasons]}``), ``deleted`` (keys),
            ``expired`` (``{key: reason}``: the deleted ones that expired, e.g.
            ``"expired: 40 days old (expire_after_days=30)"``) and ``warnings`` (e.g. a metric
            no checkpoint has: that group is left untouched).

        Raises
        ------
        CheckpointConfigError
            No rule given (that would delete everything), invalid/contradictory rules, or a
            ``status`` filter; raised before anything is read or deleted.
        """
        _no_status("prune", filters)
        policy = retention.build(
            keep_last,
            keep_best,
            keep_every_steps,
            keep_every_minutes,
            expire_after_days=expire_after_days,
        )
        if policy.empty:
            raise CheckpointConfigError(
                "prune needs at least one keep rule (keep_last, keep_best, keep_every_steps, "
                "keep_every_minutes) or expire_after_days; without one every checkpoint would "
                "be deleted."
            )
        refs = self.list(target, status=UPLOADED, **filters)
        if not refs:
            return []
        publishers = {r.key: (r.publisher or {}).get("namespace") or "unknown" for r in refs}

        def group_of(h) -> str:
            s = h.scope
            if s.is_library:
                # Per publisher: one namespace's uploads never push out another's versions.
                return "named:%s[%s]" % (h.name, publishers[h.key])
            return "%s/%s[%s]:%s" % (s.flow, s.step, s.foreach, h.name)

        # A flow's listing may span stores (ADR 005, listings): each store prunes its own.
        roots = list(dict.fromkeys(r.root for r in refs))
        out = []
        for root in roots:
            headers = [parse_key(r.key) for r in refs if r.root == root]
            store = self._store(root)
            # Each task's ending from its recorded summaries, not from these (uploaded-only)
            # refs: a paused attempt whose end upload failed has none here (issue 16, adv4-2).
            tasks = [task_prefix_of(h.key) for h in headers if not h.scope.is_library]
            last_ended = summary.last_endings(store.storage, tasks)
            plans = store.prune(
                headers,
                policy,
                group_of=group_of,
                dry_run=dry_run,
                protect=pruning.resume_points(headers, last_ended),
            )
            suffix = " in %s" % root if len(roots) > 1 else ""
            out += [
                {
                    "group": g + suffix,
                    "kept": p.keep,
                    "deleted": p.delete,
                    "expired": p.expired,
                    "warnings": p.warnings,
                }
                for g, p in plans
            ]
        return out

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
        the distinct blobs they reference (after deduplication and packing).  Only the flow's
        store is counted, never a machine's local tier (``filters``: those of :meth:`list`
        but ``status``).

        Returns
        -------
        dict
            ``rows`` (``group``, ``checkpoints``, ``logical_bytes``, ``physical_bytes``),
            ``total``, and ``stored_blobs``/``stored_bytes`` of the whole root (including blobs
            no checkpoint references, which ``gc`` reclaims).
        """
        from ..core.usage import GROUPINGS

        _no_status("du", filters)
        if by not in GROUPINGS:
            raise CheckpointConfigError(
                "by=%r: use one of %s." % (by, ", ".join(repr(g) for g in GROUPINGS))
            )
        if target is None and not filters:
            store = self._store()
            headers = store.headers(MANIFESTS_PREFIX)
        else:
            refs = self.list(target, status=UPLOADED, **filters)
            store = self._store(refs[0].root if refs else None)
            others = sorted({r.root for r in refs} - {store.url})
            if others:
                self._warn(
                    "du counts one store at a time: %s; not counted: %s (Checkpoint(root=...)"
                    ".du for each)." % (store.url, ", ".join(others))
                )
            headers = [parse_key(r.key) for r in refs if r.root == store.url]
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

        by_key = None if target is None else refspec.key_spec(target)
        if target is None:
            store, keys, label = self._store(), None, "the whole store"
        elif by_key is not None:
            key = str(by_key.key)
            store = self._view().store(by_key.root, key)
            keys, label = checker.single(store.storage, key), key
        else:
            store, headers = self._headers(target)
            keys, label = [h.key for h in headers], describe(target)
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


def _no_status(what: str, filters: dict) -> None:
    """Refuse ``status=`` for a command that acts on the flow's store only."""
    if "status" in filters:
        raise CheckpointConfigError(
            "%s(status=%r): %s acts on the checkpoints in the flow's store (status 'uploaded') "
            "only, never on a machine's local tier; drop status=." % (what, filters["status"], what)
        )


def _in_store(reference: Any, what: str) -> None:
    """Refuse a reference a listing found only in this machine's local tier (``upload="end"``):
    the flow's store has no such key, and saying why beats "never committed"."""
    if not isinstance(reference, CheckpointReference):
        return
    status = reference.get("status")
    if status is not None and status != UPLOADED:
        raise CheckpointNotFound(
            key=reference.key,
            url=reference.root,
            reason="it is only in this machine's local tier (status %r), never uploaded; %s acts "
            "on the flow's store only" % (status, what),
        )
