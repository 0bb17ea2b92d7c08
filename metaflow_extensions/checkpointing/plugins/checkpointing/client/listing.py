"""Listing checkpoints from the client: ``Checkpoint().list(...)`` and ``best(...)``.

A target (``"Flow"``, ``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"`` or a client
object) is located through Metaflow's client (:mod:`.locate`: the run's store, the namespaces
its checkpoints live under); no target lists the named checkpoints of the client's store.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from ..common.reference import CheckpointReference, references
from ..common.refspec import parse_target
from ..core.layout import library_prefix
from ..core.manifest import ManifestHeader
from ..core.policies import sort_key
from ..core.retention import numeric
from ..core.store import CheckpointStore
from ..errors import CheckpointConfigError, CheckpointNotFound
from .base import ClientBase
from .locate import locate

Where = Union[dict, Callable[[CheckpointReference], bool], None]

#: Reference fields ``order_by`` accepts besides metadata fields.
ORDER_FIELDS = ("created_on", "size", "attempt", "files_count")


class Listing(ClientBase):
    """``list`` and ``best`` of :class:`~.checkpoint.Checkpoint`."""

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
            store, headers = self._headers(
                target, name, step, run, task, foreach, attempt, latest_only
            )
            refs = references(store, headers)
        refs = _filter(refs, where)
        if order_by:
            refs = _ordered(refs, order_by)
        return refs[:limit] if limit is not None else refs

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
    ) -> tuple[CheckpointStore, list[ManifestHeader]]:
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
                % (describe(target), metric, ", ".join(seen) or "none")
            )
        return refs[0]


def describe(target: Any) -> str:
    """How messages name a listing target."""
    if target is None:
        return "the named checkpoints"
    return str(getattr(target, "pathspec", target))


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
