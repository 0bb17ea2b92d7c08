"""Which checkpoint a reference designates, for a given caller: one :func:`resolve` for all.

A reference is first parsed (:func:`.refspec.parse`, no I/O), then resolved against a
:class:`View`: what the caller may see.  A running task (``current.checkpoint``, and
``Checkpoint()`` in a process the task started) sees its own store and namespace and lists
without Metaflow's client (:mod:`..task.view`); a client outside any task sees the stores
runs recorded and the runs of its current Metaflow namespace (:mod:`..client.view`).  So a
spelling means the same everywhere, and where a caller cannot use one (``"last"`` outside a
task) the error says which spelling to use instead.

What each kind resolves to:

* ``key``: the manifest at that key, in the caller's store or the ``root`` given (a task
  refuses another store unless it loads with ``namespace_check=False``);
* ``task``: the task's newest ``latest=True`` checkpoint (its newest if none is flagged), as a
  retry of that task orders them; with a version (``TASK@1a2b3c4d``) the one checkpoint of the
  task whose id starts so (none or several: the error lists the task's ids and dates);
* ``named``: :meth:`..core.store.CheckpointStore.named`: a version pinned by id, else the
  newest version the caller's namespace trusts (:mod:`..core.promotions`);
* ``alias``: among the caller's own task's checkpoints (none outside a task; those its writer
  position would load on retry, :func:`..core.policies.visible_to`), a pathspec's
  (``Flow/@last``, ``Flow/run@last``, ...), or, for one word before the ``@``, the trusted
  versions of the named checkpoint of that name if the caller's store has one (one listing of
  that name's prefix), else the checkpoints of the flow of that name: ``last`` is the newest
  ``latest=True`` one, ``best:<metric>`` the lowest (``:max`` the highest) numeric metadata
  value, ties to the newest, ``<field>=<value>`` the newest whose metadata match
  (:mod:`.match`; none: the error names the values each field has).  Which of the two one
  word means is the same rule for every caller: no view judges whether a word is a flow.

A step or task target with no checkpoint is told apart from a misspelt one: the error names
the steps (or tasks) of the run that have checkpoints, and a name no checkpoint has but a flow
with checkpoints has says how to spell that flow's (:mod:`.hints`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol

from ..core import promotions
from ..core.manifest import Manifest, ManifestHeader, iso_time
from ..core.policies import sort_key, visible_to
from ..core.position import Position
from ..core.retention import numeric
from ..core.scope import Scope, library_scope
from ..core.store import CheckpointStore
from ..errors import CheckpointConfigError, CheckpointNotFound, CheckpointScopeError
from . import refspec
from .hints import flow_hint, misspelt, shadowed_flow
from .match import format_match, matches, shown
from .merged import StoreOf, every_store
from .refspec import KEY, NAMED, TASK, Alias, RefSpec, Target


class View(Protocol):
    """What a caller may see when a reference is resolved.

    Attributes
    ----------
    task_scope : Scope or None
        The caller's own task (``"last"`` and ``"best:<metric>"`` alone pick among its
        checkpoints); None outside a task, where a bare alias is an error.
    position : Position or None
        The caller's writer position in its task (ADR 004): a bare alias picks among the
        checkpoints that process would load on retry; None outside a task.
    """

    task_scope: Optional[Scope]
    position: Optional[Position]

    def store(self, root: Optional[str], key: str) -> CheckpointStore:
        """The store at ``root`` (None: the caller's default store) holding ``key``.

        Raises
        ------
        CheckpointScopeError
            The caller may not read another store (a task loading with its namespace check).
        """

    def reader(self) -> Optional[str]:
        """The namespace names resolve in (None: every publisher is trusted)."""

    def listing(self, target: Target) -> tuple[CheckpointStore, list[ManifestHeader]]:
        """The committed checkpoints under ``target`` the caller may see, newest first (as a
        retry orders them for a task target), with their store.

        Raises
        ------
        CheckpointNotFound, CheckpointScopeError
            An unknown flow or run, or one the caller may not see.
        """


def resolve(reference: Any, view: View) -> tuple[CheckpointStore, Manifest]:
    """The store and the manifest of the checkpoint ``reference`` designates for ``view``.

    Parameters
    ----------
    reference : RefSpec or any spelling :func:`.refspec.parse` accepts
        The reference.
    view : View
        What the caller may see.

    Raises
    ------
    CheckpointConfigError
        A malformed reference (before any I/O), or a bare alias outside a task.
    CheckpointNotFound
        No such checkpoint (no checkpoint of a task or target, no such name or version, no
        checkpoint with the metric).
    CheckpointScopeError
        A store, run or named version the caller may not use.
    ManifestError
        The manifest exists but does not parse.
    """
    spec = refspec.parse(reference)
    if spec.kind == KEY:
        store = view.store(spec.root, str(spec.key))
        status = reference.get("status") if isinstance(reference, Mapping) else None
        return _read(view, store, str(spec.key), status)
    if spec.kind == TASK:
        target: Target = spec.target  # type: ignore[assignment]
        store, headers = view.listing(target)
        if not headers:
            why = misspelt(view, target)
            raise CheckpointNotFound("Task %s has no checkpoint%s." % (target.pathspec, why))
        if spec.version:
            return _read(view, store, _by_version(headers, target, spec.version).key)
        return _read(view, store, _latest_of_task(headers, target).key)
    if spec.kind == NAMED:
        store = view.store(None, str(spec.name))
        try:
            return store, store.named(spec.text(), None if spec.version else view.reader())
        except CheckpointNotFound as exc:
            hint = "" if named_versions(store, str(spec.name)) else flow_hint(view, spec)
            if not hint and not spec.version and refspec.did_you_mean(str(spec.name)):
                # load("lastt"): an alias misspelt, as Flow@lastt says.
                hint = " %r is no alias either%s." % (
                    spec.name,
                    refspec.did_you_mean(str(spec.name)),
                )
            raise CheckpointNotFound(exc.message + hint) from None
    return _resolve_alias(spec, view)


def check_scope(manifest: Manifest, scope: Scope) -> None:
    """Refuse a task's checkpoint of another namespace or flow than ``scope`` (a task's
    loads, unless ``namespace_check=False``); named checkpoints belong to no namespace.

    Raises
    ------
    CheckpointScopeError
        Naming the checkpoint, its namespace or flow and the way to load it anyway.
    """
    theirs = manifest.scope
    if theirs.is_library:
        return
    if theirs.namespace != scope.namespace:
        raise CheckpointScopeError(
            "Checkpoint %s belongs to namespace %r but this task runs in %r; pass "
            "namespace_check=False to load it anyway."
            % (manifest.key, theirs.namespace, scope.namespace)
        )
    if theirs.flow != scope.flow:
        raise CheckpointScopeError(
            "Checkpoint %s belongs to flow %r, not %r; pass namespace_check=False to load it "
            "anyway." % (manifest.key, theirs.flow, scope.flow)
        )


def other_store_error(key: str, root: str, ours: str) -> CheckpointScopeError:
    """The error of a task asked for a checkpoint of another store (namespace check on)."""
    return CheckpointScopeError(
        "Checkpoint %s lives in the store %s, but this task uses %s; pass "
        "namespace_check=False to load it from there." % (key, root, ours)
    )


# ------------------------------------------------------------------------------ helpers
def _latest_of_task(headers: Sequence[ManifestHeader], target: Target) -> ManifestHeader:
    if not headers:
        raise CheckpointNotFound("Task %s has no checkpoint." % target.pathspec)
    marked = [h for h in headers if h.latest] or list(headers)
    return max(marked, key=sort_key(within_task=True))


def _by_version(headers: Sequence[ManifestHeader], target: Target, version: str) -> ManifestHeader:
    """The one checkpoint of the task (``headers``, newest first) whose id starts with
    ``version``."""
    found = [h for h in headers if h.id.startswith(version)]
    if len(found) == 1:
        return found[0]
    listed = found or list(headers)
    ids = ", ".join("%s (%s)" % (h.id, iso_time(h.created_ms)) for h in listed[:20])
    more = " and %d more" % (len(listed) - 20) if len(listed) > 20 else ""
    if found:
        raise CheckpointNotFound(
            "%r is the start of the ids of %d checkpoints of task %s: %s%s. Give more of the "
            "id's hex digits." % (version, len(found), target.pathspec, ids, more)
        )
    raise CheckpointNotFound(
        "Task %s has no checkpoint whose id starts with %r; its checkpoints, newest first: "
        "%s%s." % (target.pathspec, version, ids, more)
    )


def _visible(
    headers: Sequence[ManifestHeader], alias: Alias, position: Position
) -> list[ManifestHeader]:
    """The task's checkpoints (newest first) a process at ``position`` picks ``alias`` among:
    for ``last`` those a retry would choose from (the latest ones, all if none is), for a
    metric every one of its own and the sharded ones, else rank 0's and the sharded ones."""
    if alias.metric is None and not alias.where:
        return visible_to([h for h in headers if h.latest] or list(headers), position)
    return visible_to(headers, position)


def _resolve_alias(spec: RefSpec, view: View) -> tuple[CheckpointStore, Manifest]:
    alias: Alias = spec.alias  # type: ignore[assignment]
    summaries: Optional[dict] = None
    store_of: Optional[StoreOf] = None
    if spec.target is not None:
        store_of, headers, summaries = every_store(view, spec.target)
        store = store_of(headers[0]) if headers else view.store(None, spec.target.flow)
        where = "checkpoint in %s" % describe(spec.target)
        why = "" if headers else misspelt(view, spec.target)
        if why:
            raise CheckpointNotFound("No %s%s." % (where, why))
    elif spec.name is not None:
        store = view.store(None, spec.name)
        versions = named_versions(store, spec.name)
        if versions:
            headers, summaries = _trusted_versions(store, spec.name, versions, view.reader())
            where = "version of the named checkpoint %r" % spec.name
        else:
            store_of, headers, summaries = _flow_of_word(spec, store, view)
            store = store_of(headers[0])
            where = "checkpoint in flow %s" % spec.name
    elif view.task_scope is not None:
        scope = view.task_scope
        own = Target(scope.flow, scope.run, scope.step, scope.task)
        store, headers = view.listing(own)
        where = "checkpoint in task %s" % scope.pathspec
        if view.position is not None:
            headers = _visible(headers, alias, view.position)
    else:
        raise CheckpointConfigError(
            "%r picks among the running task's checkpoints, and there is no running task here "
            "(outside a @checkpoint task or a process it started). Say whose: "
            "'<Flow/run_id/step/task_id>@%s' (or '<Flow>', '<Flow/run_id>', "
            "'<Flow/run_id/step>', a checkpoint name, before the '@')." % (spec.text(), alias.text)
        )
    try:
        chosen = pick(store, headers, alias, where, summaries)
    except CheckpointNotFound as exc:
        if spec.target is not None or spec.name is None or store_of is not None:
            raise
        raise CheckpointNotFound(exc.message + shadowed_flow(view, spec)) from None
    if store_of is not None:
        store = store_of(chosen)
    return _read(view, store, chosen.key)


def _read(view: View, store: CheckpointStore, key: str, status: Optional[str] = None) -> Any:
    """``key``'s store and manifest, by the view's ``read`` if any (the client's: local tiers)."""
    read = getattr(view, "read", None)
    return read(store, key, status) if read is not None else (store, store.read(key))


def named_versions(store: CheckpointStore, name: str) -> list[ManifestHeader]:
    """Every committed version of the named checkpoint ``name`` in ``store`` (one listing of
    that name's prefix; unordered): whether ``name@<alias>`` means the named checkpoint."""
    return store.headers(library_scope(name).step_prefix(), name=name)


def describe(target: Target) -> str:
    """``target`` as a sentence names it: ``flow F``, ``run F/1``, ``step F/1/s``, ``task ...``
    (the user's spelling of each component is kept)."""
    depth = sum(p is not None for p in (target.run, target.step, target.task))
    return "%s %s" % (("flow", "run", "step", "task")[depth], target.pathspec)


def pick(
    store: CheckpointStore,
    headers: Sequence[ManifestHeader],
    alias: Alias,
    where: str,
    summaries: Optional[dict] = None,
) -> ManifestHeader:
    """The checkpoint ``alias`` names among ``headers`` (newest first).

    Parameters
    ----------
    where : str
        What ``headers`` are, as the messages say it after "No": ``"checkpoint in flow F"``,
        ``"version of the named checkpoint 'resnet50'"`` (names keep the user's case).

    Raises
    ------
    CheckpointNotFound
        No checkpoint (``last``), none with a numeric ``metric`` (``best:...``; the message
        lists the metadata fields seen), or none matching (``field=value``: the message lists
        the values each field has), naming ``where``.
    """
    if alias.where:
        return _match(store, headers, alias.where, where, summaries)
    if alias.metric is None:
        marked = [h for h in headers if h.latest] or list(headers)
        if not marked:
            raise CheckpointNotFound("No %s." % where)
        return marked[0]
    if summaries is None:
        summaries = store.summaries(headers)
    metadata = {h.key: summaries[h.key].get("metadata") or {} for h in headers}
    scored = [h for h in headers if numeric(metadata[h.key].get(alias.metric)) is not None]
    if not scored:
        seen = sorted({k for h in headers for k in metadata[h.key]})
        raise CheckpointNotFound(
            "No %s has a numeric metadata field %r (fields seen: %s)."
            % (where, alias.metric, ", ".join(seen) or "none")
        )
    # A stable sort over newest-first headers: ties go to the newest.
    value = {h.key: numeric(metadata[h.key][alias.metric]) for h in scored}
    return sorted(scored, key=lambda h: value[h.key], reverse=alias.mode == "max")[0]


def _match(
    store: CheckpointStore,
    headers: Sequence[ManifestHeader],
    where_fields: tuple,
    where: str,
    summaries: Optional[dict],
) -> ManifestHeader:
    """The newest of ``headers`` whose metadata match ``where_fields``."""
    if not headers:
        raise CheckpointNotFound("No %s." % where)
    if summaries is None:
        summaries = store.summaries(headers)
    metadata = [summaries[h.key].get("metadata") or {} for h in headers]
    for h, md in zip(headers, metadata):
        if matches(md, where_fields):
            return h
    seen = []
    for field, _ in where_fields:
        values = sorted({shown(md[field]) for md in metadata if field in md})
        listed = ", ".join(values[:12]) + (", ..." if len(values) > 12 else "")
        seen.append("%s: %s" % (field, listed) if values else "%s: in no checkpoint" % field)
    fields = sorted({k for md in metadata for k in md})
    raise CheckpointNotFound(
        "No %s has metadata %s (values seen: %s; fields seen: %s)."
        % (where, format_match(where_fields), "; ".join(seen), ", ".join(fields) or "none")
    )


def _flow_of_word(
    spec: RefSpec, store: CheckpointStore, view: View
) -> tuple[StoreOf, list[ManifestHeader], Optional[dict]]:
    """The checkpoints of the flow ``spec.name`` (``word@alias`` where the caller's store
    holds no checkpoint named ``word``), with their store.

    Raises
    ------
    CheckpointNotFound
        Neither a named checkpoint nor a flow with checkpoints of that word: the message says
        both, and how to spell either.
    """
    name = str(spec.name)
    neither = (
        "%r picks among the versions of a named checkpoint %r, else the checkpoints of a flow "
        "%s: there is no checkpoint named %r in %s, and "
        % (spec.text(), name, name, name, store.url)
    )
    try:
        found, headers, summaries = every_store(view, Target(name))
    except CheckpointNotFound as exc:
        why = exc.message.rstrip(".")
        raise CheckpointNotFound(neither + "no flow to pick from (%s)." % why) from None
    if not headers:
        raise CheckpointNotFound(neither + "no checkpoint in flow %s." % name)
    return found, headers, summaries


def _trusted_versions(
    store: CheckpointStore, name: str, headers: list[ManifestHeader], reader: Optional[str]
) -> tuple[list[ManifestHeader], dict]:
    """The versions (``headers``, at least one) of the named checkpoint ``name`` a reader in
    ``reader`` trusts (all with ``reader`` None), newest first, and the summaries of every
    version (what ``name@last`` and ``name@best:<metric>`` choose among).

    Raises
    ------
    CheckpointScopeError
        Versions, none of which the reader trusts (the message says what to pin or promote).
    """
    headers.sort(key=sort_key(within_task=False), reverse=True)
    summaries = store.summaries(headers)
    if reader is None:
        return headers, summaries
    promoted = promotions.promoted_versions(store.storage, name, reader)
    publisher = {h.key: promotions.publisher_of(summaries[h.key].get("source")) for h in headers}
    chosen = [h for h in headers if promotions.trusted(publisher[h.key], h.id, reader, promoted)]
    if not chosen:
        passed = [
            (h, publisher[h.key], "published elsewhere")
            for h in headers
            if publisher[h.key] is not None
        ]
        raise promotions.untrusted_error(name, reader, passed)
    return chosen, summaries


__all__ = [
    "View",
    "check_scope",
    "describe",
    "named_versions",
    "other_store_error",
    "pick",
    "resolve",
]
