"""Listing checkpoints from the client: ``Checkpoint().list(...)`` and ``best(...)``.

A target (``"Flow"``, ``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"`` or a client
object) is located through Metaflow's client (:mod:`.locate`: every store its runs and steps
recorded, the namespaces its checkpoints live under); no target lists the named checkpoints of
the client's store.  The stores are listed one by one and merged; a store that cannot be read
gives one :class:`CheckpointListWarning` naming it and why, and the others are listed.  A field
(``order_by``, ``where``, ``best(metric=)``) that no listed checkpoint has is refused as a typo,
naming the fields there are.

Long module: listing is one pipeline (which task or target, which stores, which attempts,
which fields) whose steps share their arguments; split, each part would re-check them.

``task=`` designates one task (a pathspec or a ``Task``, or an id narrowing a target) and lists
its latest attempt unless ``attempt=`` says otherwise (``attempt="all"``: every attempt), as
code written for other ``@checkpoint`` extensions expects; a positional target browses every
attempt (so does the CLI's ``--task``, a filter like ``--run``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from ..common.attempts import (
    ALL,
    latest_attempts,
    metaflow_attempt,
    parse_attempt,
    register_task_lister,
    store_filter,
)
from ..common.local_tier import machine_tiers
from ..common.reference import CheckpointReference, references
from ..common.refspec import Target, parse_target, task_target
from ..core.bulk import paused_gc
from ..core.layout import library_prefix
from ..core.manifest import ManifestHeader
from ..core.policies import sort_key
from ..core.retention import numeric
from ..core.store import CheckpointStore
from ..core.summary import endings
from ..core.upload_status import check_status
from ..errors import CheckpointConfigError, CheckpointNotFound, StorageError
from ..fmt import describe_error
from .base import CheckpointListWarning, ClientBase

__all__ = ["CheckpointListWarning", "Listing", "ORDER_FIELDS"]
from .locate import check_task, locate
from .tiers import tier_parts, with_tiers

Where = Union[dict, Callable[[CheckpointReference], bool], None]
#: ``status=`` of :meth:`Listing.list`: one status or several.
Statuses = Union[str, Sequence[str], None]

#: Reference fields ``order_by`` accepts besides metadata fields.
ORDER_FIELDS = ("created_on", "size", "attempt", "files_count")

#: Errors that make one store of a listing unreadable (credentials, server down, permission
#: denied, a backend package missing) without making the others so.
_STORE_ERRORS = (StorageError, CheckpointConfigError)


#: One store's part of a listing: the store, its matching headers (newest first) and, when
#: asked for, their references.
_Part = tuple[CheckpointStore, list[ManifestHeader], Optional[list[CheckpointReference]]]


class Listing(ClientBase):
    """``list`` and ``best`` of :class:`~.checkpoint.Checkpoint`."""

    def list(
        self,
        target: Any = None,
        *,
        name: Optional[str] = None,
        step: Optional[str] = None,
        run: Optional[str] = None,
        task: Any = None,
        foreach: Optional[str] = None,
        attempt: Union[int, str, None] = None,
        latest_only: bool = False,
        where: Where = None,
        order_by: Optional[str] = None,
        limit: Optional[int] = None,
        full_namespace: bool = False,
        status: Statuses = None,
    ) -> list[CheckpointReference]:
        """Committed checkpoints, newest first (or ordered by a metadata field).

        A flow's checkpoints are listed from every store its runs and steps used (a run on a
        local and one on an S3 datastore, a step with ``@checkpoint(root=...)``), merged.  A
        store that cannot be read (credentials, server down, permission denied) gives one
        :class:`CheckpointListWarning` naming it and why, and the others are listed.

        A checkpoint whose manifest cannot be parsed (truncated, tampered with, written by a
        newer release) is listed too, flagged ``damaged=True`` with the reason in ``error``
        (see :class:`CheckpointReference`); it never hides the others.  Delete it with
        :meth:`delete`.

        Each reference says where its checkpoint stands (``status``) and how the attempt
        that saved it ended (``task_status``: ``"paused"`` for a task that stopped in
        ``current.checkpoint.pause()``, never ``"failed"``).  On the machine that ran a task
        of ``@checkpoint(upload="end")``, its checkpoints still only in the local tier are
        listed too (``"local"``, ``"uploading"``, ``"failed"``); elsewhere every listed
        checkpoint is ``"uploaded"``.

        Parameters
        ----------
        target : str or metaflow client object, optional
            ``"Flow"``, ``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"`` or a
            ``Flow``/``Run``/``Step``/``Task`` object.  None lists the named checkpoints saved
            outside any task (``Checkpoint().save``, ``metaflow checkpoint upload``).  In a
            task, a bare word that names no flow is a checkpoint name, as the reference
            extension's ``list("best")`` (its first parameter is ``name``).
        name : str, optional
            Only this checkpoint name (series).
        step, run : str, optional
            Only checkpoints of this step or run id (narrow a ``"Flow"`` target):
            ``list("F/1", step="s")``, ``list("F", run="1", step="s")`` and ``list("F/1/s")``
            list the same checkpoints in the same order.
        task : str or metaflow.Task, optional
            One task's checkpoints, of its latest attempt unless ``attempt`` says otherwise:
            a pathspec ``"Flow/run/step/task"`` or a ``Task`` (without ``target``; a ``Task``
            made with ``attempt=N`` means attempt N), or a task id narrowing ``target``
            (``list("F/1/s", task="2")``).  The latest attempt is the one Metaflow recorded
            last, else the highest among the task's checkpoints; in a task, its own attempt
            for itself.  A positional target (``list("F/1/s/2")``) lists every attempt.
            A task ``resume`` cloned lists its origin's checkpoints; a ``@parallel`` worker
            those its node saved (the gang saves under its control task).  In a task, any
            call but its own task's (no target and no ``task=``, or ``task=`` itself) is
            answered exactly as from a notebook.
        foreach : str, optional
            Only this foreach split, e.g. ``"3"`` or ``"3.0"`` (``"_"``: outside any foreach).
        attempt : int or "all", optional
            Only checkpoints written by this attempt; ``"all"``: every attempt (also of a
            ``task=``).
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
        full_namespace : bool
            With ``task=``: every task and run of that task's step visible in the current
            namespace, every attempt (``attempt=N`` still filters).  In a task without
            ``task=``: every task and run of the running step (``within_task=False``).
        status : str or list of str, optional
            Only checkpoints with this status (or one of these): ``"local"``,
            ``"uploading"``, ``"uploaded"``, ``"failed"``.

        Raises
        ------
        CheckpointConfigError
            ``order_by`` or a ``where`` key names a field no listed checkpoint has (a typo:
            the message lists the fields there are).  An empty listing is not an error.
            ``attempt`` is not a number or ``"all"``; ``task=`` is a pathspec and a target
            is given too, or a task id without a target; ``full_namespace=True`` outside a
            task without ``task=``; ``step``, ``run`` or ``foreach`` without a target (in a
            task too: never silently dropped); ``status`` is not a status (the message names
            them), checked before anything is read.
        CheckpointNotFound
            Unknown flow, run, step or task (a step's message lists the run's steps).
        CheckpointScopeError
            The run is not visible in the current namespace.
        StorageError
            No store of the target could be read.
        """
        wanted = _statuses(status)
        if self._runtime is not None and self._origin != "cli":
            target, name = self._reference_name(target, name)
        with paused_gc():  # a with block, not a decorator: warnings' stack levels count frames
            refs = self._select(
                target,
                name,
                step,
                run,
                task,
                foreach,
                attempt,
                latest_only,
                full_namespace=full_namespace,
            )
        _check_fields(refs, where, order_by, describe(target, task) if task is not None else "")
        refs = _filter(refs, where)
        if wanted is not None:
            refs = [r for r in refs if r.status in wanted]
        if order_by:
            refs = _ordered(refs, order_by)
        return refs[:limit] if limit is not None else refs

    def _select(
        self,
        target: Any,
        name: Optional[str] = None,
        step: Optional[str] = None,
        run: Optional[str] = None,
        task: Any = None,
        foreach: Optional[str] = None,
        attempt: Union[int, str, None] = None,
        latest_only: bool = False,
        strict: bool = False,
        full_namespace: bool = False,
    ) -> list[CheckpointReference]:
        """The references :meth:`list` filters, newest first, before ``where``/``order_by``
        (``strict``: an unreadable store raises, see :meth:`_parts`)."""
        selected = parse_attempt(attempt)
        latest_of = None  # the CLI's --task is a filter like --run: every attempt
        if self._origin != "cli":
            _check_narrowing(target, step, run, foreach)
            if self._runtime is not None and target is None and self._own_task(task):
                # The task-only conveniences: no target, no task= (or the running task
                # itself) is this task's checkpoints as current.checkpoint.list() returns
                # them; full_namespace=True every task and run of this step.  Any other call
                # is answered below, exactly as from a notebook (one code path).
                refs = self._runtime.list(
                    name=name, task=task, attempt=selected, full_namespace=full_namespace
                )
                return [r for r in refs if not latest_only or r.latest]
            target, step, run, task, latest_of = _task_keyword(
                target, step, run, task, full_namespace
            )
        listed, node = _listed_as(target)
        if listed is not None:  # a clone's origin, or the control task of a gang's worker
            target = listed
            latest_of = latest_of and _attempt_known_for(None, None)
        parts, within_task = self._parts(
            target,
            name,
            step,
            run,
            task,
            foreach,
            store_filter(selected),
            latest_only,
            read=True,
            strict=strict,
        )
        pairs = [(h, r) for _, headers, refs in parts for h, r in zip(headers, refs or [])]
        if node is not None:  # a worker's own saves, and the sharded ones it has a part of
            pairs = [(h, r) for h, r in pairs if r.writer is None or r.writer["node"] == node]
        if latest_of is not None and selected is None:
            keep = {id(h) for h in latest_attempts([h for h, _ in pairs], latest_of)}
            pairs = [(h, r) for h, r in pairs if id(h) in keep]
        if len(parts) > 1:
            key = sort_key(within_task=within_task)
            pairs.sort(key=lambda pair: key(pair[0]), reverse=True)
        return [r for _, r in pairs]

    def _own_task(self, task: Any) -> bool:
        """Whether ``task=`` designates the task this client runs in (None does)."""
        if task is None:
            return True
        if self._task is None or (isinstance(task, (str, int)) and "/" not in str(task)):
            return False
        return task_target(task).pathspec == self._task.scope.pathspec

    def _reference_name(self, target: Any, name: Optional[str]) -> tuple[Any, Optional[str]]:
        """In a task, ``list("best")`` means what the reference extension means by it, its
        first positional parameter being ``name``: the checkpoints named ``best`` (of this
        task, or of ``task=``), unless a flow of that name exists; then it is that flow, as
        in a notebook.  Only a bare word can be both (a flow name has no ``/``).

        Raises
        ------
        CheckpointConfigError
            A flow of that name exists and this task has checkpoints named so too: the call
            is ambiguous; the message gives both spellings.
        """
        if not isinstance(target, str) or "/" in target or name is not None:
            return target, name
        if not target.isidentifier() or not _flow_exists(target):
            return None, target
        assert self._runtime is not None  # only called in a task
        if self._runtime.list(name=target):
            raise CheckpointConfigError(
                "list(%r) in a task is ambiguous: this task has checkpoints named %r and a flow "
                "%r exists. Pass list(name=%r) for the checkpoints of that name (the reference "
                "extension's list(%r)), or list(%r, ...) with a run, e.g. list('%s/<run_id>')."
                % (target, target, target, target, target, target, target)
            )
        return target, name

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
        tiers: bool = False,
    ) -> tuple[CheckpointStore, list[ManifestHeader]]:
        """A store and the headers of its committed checkpoints :meth:`list` returns for these
        arguments (keys only: no manifest is read), newest first.  When the target's
        checkpoints are in several stores: the store holding the newest one, with a
        :class:`CheckpointListWarning` naming the others (a task's checkpoints are always in
        one store).  It picks a store, so an unreadable one raises (``strict``).  With
        ``tiers``, the checkpoints only this machine's tiers hold are among the headers (read
        them through :func:`..common.local_tier.read`)."""
        parts, _ = self._parts(
            target,
            name,
            step,
            run,
            task,
            foreach,
            attempt,
            latest_only,
            strict=True,
            tiers="merged" if tiers else "",
        )
        listed = [p for p in parts if p[1]] or parts[:1]
        if len(listed) == 1:
            return listed[0][0], listed[0][1]
        key = sort_key(within_task=task is not None)
        store, headers, _ = max(listed, key=lambda p: key(p[1][0]))
        self._warn(
            "The checkpoints of %s are in several stores; only %s (which has the newest) is "
            "used here, not %s."
            % (
                describe(target),
                store.url,
                ", ".join(p[0].url for p in listed if p[0] is not store),
            ),
            stacklevel=3,
        )
        return store, headers

    def _parts(
        self,
        target: Any,
        name: Optional[str],
        step: Optional[str],
        run: Optional[str],
        task: Optional[str],
        foreach: Optional[str],
        attempt: Optional[int],
        latest_only: bool,
        read: bool = False,
        strict: bool = False,
        tiers: str = "",
    ) -> tuple[list[_Part], bool]:
        """Each readable store's matching headers (and references when ``read``), and whether
        they are ordered as one task's.  An unreadable store is warned about; when none can
        be read the error is raised (never an empty listing); with ``strict`` (an alias,
        ``best``, ``verify``: a pick) any unreadable one raises (ADR 005, fix-stores).

        The checkpoints only this machine's local tiers hold (:mod:`.tiers`) are in the
        references when ``read`` (with their status), and in the headers with ``tiers``:
        ``"merged"`` into their flow store's (read through :func:`..common.local_tier.read`),
        ``"apart"`` as parts of their own (a :class:`..common.local_tier.TierStore` each), so
        that a pick (an alias, a short id, a task's latest) chooses among what ``list()``
        shows on this machine: what can be loaded from here."""
        filters = dict(name=name, run=run, task=task, attempt=attempt, latest_only=latest_only)
        if target is None:
            store = self._store()
            headers = _matching(store, [library_prefix()], None, step, None, foreach, filters)
            headers.sort(key=sort_key(), reverse=True)
            return [(store, headers, references(store, headers) if read else None)], False
        t = parse_target(target)
        run = t.run or (str(run) if run is not None else None)
        step, task = t.step or step, t.task or task
        if run is not None:
            # list("F", run="1", step="s") and list("F/1", step="s") are list("F/1/s"): the
            # same stores, checks and order.
            t = Target(t.flow, run, step, task if step is not None else None)
        located = locate(t, self._root, step=step)
        filters.update(run=run, task=task)
        within_task = task is not None
        parts, failures, apart = [], [], []
        for root in located.roots:
            gone = _missing_local_root(root)
            if gone:
                # Listed as empty (what is there), but said: a moved or unmounted directory
                # must not pass for a store without checkpoints.
                self._warn(
                    "Could not list the checkpoints of %s in %s (%s); the other stores are "
                    "listed." % (describe(target), root, gone),
                    stacklevel=4,
                )
            try:
                store = self._store(root)
                headers = _matching(
                    store, located.prefixes, t.flow, step, located.runs, foreach, filters
                )
                # One task's checkpoints in the order its retry sees them (attempt, then its
                # task clock), as current.checkpoint.list() does; across tasks, by date.
                headers.sort(key=sort_key(within_task=within_task), reverse=True)
                refs = None

                def in_tier(tier: CheckpointStore) -> list[ManifestHeader]:
                    return _matching(
                        tier, located.prefixes, t.flow, step, located.runs, foreach, filters
                    )

                if tiers and not read:
                    extra = tier_parts(
                        store,
                        headers,
                        self._tiers(store, t),
                        in_tier,
                        sort_key(within_task=within_task),
                    )
                    if tiers == "merged" and extra:
                        headers = headers + [h for _, hs in extra for h in hs]
                        headers.sort(key=sort_key(within_task=within_task), reverse=True)
                    elif extra:
                        apart.extend((tier, hs, None) for tier, hs in extra)
                if read:
                    refs = references(store, headers, task_status=endings(store.storage, headers))
                    headers, refs = with_tiers(
                        store,
                        headers,
                        refs,
                        self._tiers(store, t),
                        in_tier,
                        sort_key(within_task=within_task),
                    )
            except _STORE_ERRORS as exc:
                failures.append((root, exc))
                continue
            parts.append((store, headers, refs))
        if failures and not parts:
            if len(failures) == 1:
                raise failures[0][1]
            raise StorageError(
                "No store of %s could be read: %s."
                % (
                    describe(target),
                    "; ".join("%s (%s)" % (r, describe_error(e)) for r, e in failures),
                )
            )
        if failures and strict:  # picking from the readable stores could be wrong
            why = "; ".join("%s (%s)" % (r, _why(e)) for r, e in failures)
            raise StorageError(
                "Could not read the checkpoints of %s in %s; the answer from the other stores "
                "could be wrong, so none is given: make the store readable and retry, or name "
                "one store with root=/--root." % (describe(target), why)
            )
        for root, exc in failures:
            self._warn(
                "Could not list the checkpoints of %s in %s (%s); the other stores are listed."
                % (describe(target), root, _why(exc)),
                stacklevel=4,
            )
        if t.task is not None and not any(headers for _, headers, _ in parts + apart):
            check_task(t)  # an empty listing of a task: say so if the task does not exist
        return parts + apart, within_task

    def _tiers(self, store: CheckpointStore, t: Target) -> list[str]:
        """The local tiers of this machine that may hold checkpoints of ``t`` in ``store``
        (see :mod:`.tiers`): a task target's registered one, and the default one."""
        return machine_tiers(store.url, _metadata(t) if t.task is not None else None)

    def best(
        self, target: Any = None, *, metric: str, mode: str = "min", **filters: Any
    ) -> CheckpointReference:
        """The checkpoint with the lowest (``mode="min"``) or highest (``"max"``) ``metric``.

        ``target`` and ``filters`` are those of :meth:`list` (``limit`` is ignored; the
        stores are those ``list`` reads).  Checkpoints without the metric are ignored.

        Raises
        ------
        CheckpointConfigError
            ``mode`` is not ``"min"``/``"max"``, or no listed checkpoint has a metadata field
            ``metric`` (a typo: the message lists the fields there are).
        CheckpointNotFound
            No checkpoint is listed, or none has a numeric ``metric``.
        """
        if mode not in ("min", "max"):
            raise CheckpointConfigError("mode=%r: use 'min' or 'max'." % (mode,))
        where = filters.pop("where", None)
        wanted = _statuses(filters.pop("status", None))
        filters.pop("limit", None)
        with paused_gc():
            refs = self._select(target, strict=True, **filters)
        what = describe(target, filters.get("task"))
        _check_fields(refs, where, None, what if filters.get("task") is not None else "")
        refs = _filter(refs, where)
        if wanted is not None:
            refs = [r for r in refs if r.status in wanted]
        seen = _metadata_fields(refs)
        if refs and metric not in seen:
            raise CheckpointConfigError(
                "best(metric=%r): no checkpoint of %s has a metadata field %r; the fields "
                "are: %s." % (metric, what, metric, ", ".join(seen) or "none")
            )
        refs = _ordered(refs, ("-" if mode == "max" else "") + metric)
        if not refs and self._latest_rule_emptied(target, filters):
            raise CheckpointNotFound(
                "No checkpoint of %s: its latest attempt saved none (list(task=...) and "
                "best(task=...) take a task's latest attempt); earlier attempts did, pass "
                "attempt='all' (or attempt=N) to consider them." % what
            )
        if not refs or _metric(refs[0], metric) is None:
            raise CheckpointNotFound(
                "No checkpoint of %s has a numeric metadata field %r (fields seen: %s)."
                % (what, metric, ", ".join(seen) or "none")
            )
        return refs[0]

    def _latest_rule_emptied(self, target: Any, filters: dict) -> bool:
        """Whether a ``task=`` listing is empty only because of the latest-attempt rule (an
        error path only: one more listing, of every attempt)."""
        if filters.get("task") is None or filters.get("attempt") is not None:
            return False
        return bool(self._select(target, strict=True, **dict(filters, attempt=ALL)))


def _statuses(status: Statuses) -> Optional[frozenset]:
    """The statuses ``status=`` keeps (None: all).

    Raises
    ------
    CheckpointConfigError
        A value that is not a status, naming the statuses.
    """
    if status is None:
        return None
    values = [status] if isinstance(status, str) else status
    if not isinstance(values, (list, tuple, set, frozenset)) or not values:
        raise CheckpointConfigError(
            "status=%r: pass a status or a list of them: 'local', 'uploading', 'uploaded', "
            "'failed'." % (status,)
        )
    return frozenset(check_status(v) for v in values)


def _flow_exists(flow: str) -> bool:
    """Whether Metaflow has recorded a flow of this name (in any namespace)."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    try:
        Flow(flow)
    except MetaflowNamespaceMismatch:  # it exists, with no run in this namespace
        return True
    except MetaflowNotFound:
        return False
    return True


def _check_narrowing(
    target: Any, step: Optional[str], run: Optional[str], foreach: Optional[str]
) -> None:
    """Refuse ``step=``/``run=``/``foreach=`` without a target (in a task too): they narrow a
    flow, run or step, and the named checkpoints have none, so they would silently match
    nothing (or, in a task, be dropped).

    Raises
    ------
    CheckpointConfigError
        One of them is given without a target, naming how to pass one.
    """
    given = [(k, v) for k, v in (("step", step), ("run", run), ("foreach", foreach)) if v]
    if target is None and given:
        spelled = ", ".join("%s=%r" % kv for kv in given)
        raise CheckpointConfigError(
            "list(%s) without a target: %s narrow a flow, run or step; name it, "
            "list('Flow', %s) (in a task, current.flow_name is the running flow), or pass "
            "task='Flow/run_id/step/task_id'."
            % (spelled, "/".join(k + "=" for k, _ in given), spelled)
        )


def _task_keyword(
    target: Any, step: Optional[str], run: Optional[str], task: Any, full_namespace: bool
) -> tuple[Any, Optional[str], Optional[str], Optional[str], Optional[Callable]]:
    """``list``'s target, step, run and task id once ``task=`` and ``full_namespace`` are
    applied, and how to tell a listed task's latest attempt (None: every attempt is listed).

    Raises
    ------
    CheckpointConfigError
        ``task=`` is a pathspec or ``Task`` and a target is given too, or a task id without a
        target; ``full_namespace=True`` without ``task=`` (outside a task there is no step to
        widen to).
    """
    whole = task is not None and (not isinstance(task, (str, int)) or "/" in str(task))
    if full_namespace and not whole:
        raise CheckpointConfigError(
            "full_namespace=True lists every task and run of a task's step: outside a task, "
            "pass that task, list(task='Flow/run_id/step/task_id', full_namespace=True), or "
            "list a flow's step directly: list('Flow', step='train')."
        )
    if whole and target is not None:
        raise CheckpointConfigError(
            "list(%r, task=%r): task= already names a whole task; pass either a target (and a "
            "task id, task='2') or task='Flow/run_id/step/task_id' alone."
            % (describe(target), describe(task))
        )
    if whole:
        t = task_target(task)
        if full_namespace:  # its step, every task and run: every attempt
            return t.flow, t.step, None, None, None
        return t.pathspec, None, None, None, _attempt_known_for(t.pathspec, task)
    if task is None:
        return target, step, run, None, None
    if target is None:  # an id alone would filter the named checkpoints: always empty
        raise CheckpointConfigError(
            "list(task=%r): a task id narrows a target, list('Flow/run_id/step', task=%r); "
            "or pass the whole task, task='Flow/run_id/step/task_id' or a Metaflow Task."
            % (task, task)
        )
    return target, step, run, str(task), _attempt_known_for(None, None)


#: Clones followed at most (a resume of a resume of ...), so a loop in metadata cannot hang.
_MAX_CLONES = 32


def _listed_as(target: Any) -> tuple[Optional[str], Optional[int]]:
    """Which task a task target's checkpoints are listed from, when not its own (None), and
    which ``@parallel`` node's saves are its own (None: every writer's).

    - A task ``resume`` cloned ran nothing, so it saved nothing: its checkpoints are its
      origin's (what the cloned artifact of other ``@checkpoint`` extensions lists), following
      clones of clones.  Metaflow records ``origin-run-id``/``origin-task-id`` on clones.
    - A worker of a ``@parallel`` gang saves under the gang's control task (one lineage the
      whole gang retries from): a worker lists the control task's checkpoints it wrote (its
      node's) and the sharded ones it has a part of, as its own artifact would in other
      extensions.

    Any other target, or a task Metaflow does not know: ``(None, None)`` (one metadata read
    of a task target, none of any other).
    """
    if target is None:
        return None, None
    t = parse_target(target)
    if t.task is None:
        return None, None
    seen, node = t, None
    for _ in range(_MAX_CLONES):
        md = _metadata(seen)
        if md is None:
            break
        run, task_id = md.get("origin-run-id"), md.get("origin-task-id")
        if run and task_id:
            seen = Target(seen.flow, str(run), seen.step, str(task_id))
            continue
        control, node = _gang_of(seen, md)
        seen = control or seen
        break
    return (seen.pathspec if seen != t else None), node


def _metadata(t: Target) -> Optional[dict]:
    """The task's metadata (latest value of each field), None when Metaflow cannot tell."""
    from metaflow import Task
    from metaflow.exception import MetaflowNotFound

    try:
        return Task(t.pathspec, _namespace_check=False).metadata_dict
    except (MetaflowNotFound, OSError):
        return None


def _gang_of(t: Target, md: dict) -> tuple[Optional[Target], Optional[int]]:
    """The control task and node index of a ``@parallel`` worker task (``(None, None)`` for
    any other task).  The node is the last index of its ``foreach-execution-path``; the control
    task is the one Metaflow's local runtime names it after (``<control>_node_<i>``), else the
    step's only control task."""
    if "parallel-world-size" not in md or md.get("internal_task_type") == "control_task":
        return None, None
    index = str(md.get("foreach-execution-path", "")).rpartition(":")[2]
    if not index.isdigit():
        return None, None
    control = t.task.rpartition("_node_")[0]
    if not control:
        from metaflow import Step

        step = Step("%s/%s/%s" % (t.flow, t.run, t.step), _namespace_check=False)
        ids = [x.id for x in step if x.metadata_dict.get("internal_task_type") == "control_task"]
        if len(ids) != 1:
            return None, None
        control = ids[0]
    return Target(t.flow, t.run, t.step, control), int(index)


def _attempt_known_for(pathspec: Optional[str], task: Any) -> Callable[[str], Optional[int]]:
    """The latest attempt of a listed task Metaflow knows (``task`` itself for ``pathspec``: a
    ``Task`` made with ``attempt=N`` answers N); None: the highest of its checkpoints."""

    def known(listed: str) -> Optional[int]:
        return metaflow_attempt(task if listed == pathspec and task is not None else listed)

    return known


def _matching(
    store: CheckpointStore,
    prefixes: list[str],
    flow: Optional[str],
    step: Optional[str],
    runs: Optional[set],
    foreach: Optional[str],
    filters: dict,
) -> list[ManifestHeader]:
    """Headers of ``store`` under ``prefixes`` matching the filters (``flow`` None: named)."""
    out = []
    for prefix in prefixes:
        for h in store.headers(prefix, **filters):
            s = h.scope
            if flow is not None and (s.flow != flow or (runs is not None and s.run not in runs)):
                continue
            if step is not None and s.step != step:
                continue
            if foreach is not None and s.foreach != str(foreach):
                continue
            out.append(h)
    return out


def _missing_local_root(root: str) -> Optional[str]:
    """Why the local root a run recorded cannot be there (``None`` if it is, if it is not
    local, or if it is the default root, which is created by the first save)."""
    from ..storage.factory import normalize_root, url_scheme
    from .locate import default_root

    if url_scheme(root) not in ("", "file", "local"):
        return None
    path = normalize_root(root)
    if os.path.isdir(path):
        return None
    try:
        if path == normalize_root(default_root()):
            return None
    except CheckpointConfigError:
        pass  # no default root configured: this one is not it
    what = "is not a directory" if os.path.exists(path) else "does not exist here"
    return "%s %s (moved, or not mounted?)" % (path, what)


def _why(exc: BaseException) -> str:
    """A store's error in a warning: its type and cause (``reason``), without the advice a
    failed listing gives (the listing went on)."""
    reason = getattr(exc, "reason", None)
    return "%s: %s" % (type(exc).__name__, reason) if reason else describe_error(exc)


def _metadata_fields(refs: list[CheckpointReference]) -> list[str]:
    return sorted({k for r in refs for k in (r.metadata or {})})


def _check_fields(
    refs: list[CheckpointReference], where: Where, order_by: Optional[str], what: str = ""
) -> None:
    """Refuse an ``order_by`` or ``where`` field that none of ``refs`` (the checkpoints of
    ``what``) has (a typo); an empty listing has nothing to check against."""
    if not refs:
        return
    seen = _metadata_fields(refs)
    field = (order_by or "").lstrip("-")
    if field and field not in seen and field not in ORDER_FIELDS:
        raise CheckpointConfigError(
            "order_by=%r: no listed checkpoint%s has a field %r; order by a metadata field "
            "(%s) or by %s."
            % (order_by, _of(what), field, ", ".join(seen) or "none", ", ".join(ORDER_FIELDS))
        )
    unknown = [k for k in where if k not in seen] if isinstance(where, dict) else []
    if unknown:
        raise CheckpointConfigError(
            "where=%r: no listed checkpoint%s has a metadata field %s; the fields are: %s."
            % (where, _of(what), ", ".join(repr(k) for k in unknown), ", ".join(seen) or "none")
        )


def _of(what: str) -> str:
    return " of %s" % what if what else ""


def describe(target: Any, task: Any = None) -> str:
    """How messages name what was listed: a target, ``task=`` (alone or narrowing one), or the
    named checkpoints."""
    if task is not None and target is None:
        return "task %s" % getattr(task, "pathspec", task)
    if target is None:
        return "the named checkpoints"
    named = str(getattr(target, "pathspec", target))
    return "%s (task %s)" % (named, task) if task is not None else named


def _metric(ref: CheckpointReference, field: str) -> Optional[float]:
    return numeric(ref.metadata.get(field))


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


class _Notebook(Listing):
    """A listing that answers as from a notebook, in a task too (no task of its own)."""

    _sees_task = False


def _list_as_from_a_notebook(**kwargs: Any) -> list[CheckpointReference]:
    """What ``current.checkpoint.list(task=<another task>)`` returns: this module's answer."""
    return _Notebook().list(**kwargs)


register_task_lister(_list_as_from_a_notebook)
