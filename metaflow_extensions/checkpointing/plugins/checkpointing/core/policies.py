"""Which checkpoint a task starts from: the load policies of design.md section 2.

* ``fresh``: the latest (``latest=True``) checkpoint of this task from earlier attempts; else,
  for a task re-executed by ``resume``, the latest of its counterpart (same step and foreach
  path) in the origin run, following older origins in turn.
* ``eager``: as ``fresh``; if that finds nothing, the latest of the same step and foreach path
  from any run in the namespace.
* ``none``: nothing.

Each lookup is one prefix listing (see :mod:`.scope`).  Which of the checkpoints found a
process takes depends on its writer position (ADR 004, :func:`visible_to`): its own and the
sharded ones if its newest is not older than the gang's from another attempt (across runs: only
its own of the gang's newest run count), else rank 0's and the sharded ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import CheckpointConfigError, ManifestError
from ..storage.base import Storage
from .manifest import ManifestHeader, parse_key
from .position import RANK0, Position
from .scope import Scope

POLICIES = ("fresh", "eager", "none")


def validate_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise CheckpointConfigError(
            "@checkpoint(load_policy=%r) is not supported: use one of %s."
            % (policy, ", ".join(repr(p) for p in POLICIES))
        )
    return policy  # type: ignore[return-value]


#: Attribute a listed header carries: its manifest's mtime in that listing (None when the
#: storage gives none).  Not a field: equality, hashing and keys stay those of the manifest key.
_MTIME = "_listed_mtime"


def list_headers(storage: Storage, prefix: str) -> list[ManifestHeader]:
    """Headers of every committed manifest under ``prefix``, newest first; each keeps the
    mtime the listing gave (:func:`listed_mtime`), so expiry needs no second listing."""
    headers = []
    for o in storage.list(prefix):
        try:
            h = parse_key(o.key)  # once: a key that does not parse is not a manifest's
        except ManifestError:
            continue
        object.__setattr__(h, _MTIME, o.mtime)  # frozen dataclass: set outside its fields
        headers.append(h)
    headers.sort(key=lambda h: h.order, reverse=True)
    return headers


def listed_mtime(header: ManifestHeader) -> tuple[bool, Optional[float]]:
    """``(True, mtime)`` for a header from :func:`list_headers` (its manifest's mtime in that
    listing, None when the storage gives none); ``(False, None)`` for one built otherwise."""
    if hasattr(header, _MTIME):
        return True, getattr(header, _MTIME)
    return False, None


def sort_key(within_task: bool = False) -> Callable[[ManifestHeader], tuple]:
    """How checkpoints are ordered, oldest first.

    ``within_task``: as a retry of their task orders them (``task_order``: attempt first;
    dates inside a task come from its logical clock, see :mod:`.clock`).  Otherwise by date
    (``order``: wall-clock based, the only common measure of tasks that ran on different
    machines).  Within one task both agree for checkpoints dated by the task clock.  The choice
    belongs to the context (a task, or a lineage of runs), never to which checkpoints happen
    to be listed: deleting some must not change which of the others is the newest.
    """
    return (lambda h: h.task_order) if within_task else (lambda h: h.order)


def visible_to(
    headers: Sequence[ManifestHeader], position: Position, within_task: bool = True
) -> list[ManifestHeader]:
    """The checkpoints of ``headers`` the process at ``position`` chooses among (in the order
    given): its own and the sharded ones if its own **count**, otherwise rank 0's and the
    sharded ones (the gang's).

    Within a task (``within_task``: a retry, ``resume``) its own count when it wrote any and
    the newest of them is from the same attempt as the gang's newest, or later by
    :func:`sort_key` (attempt first).  Across runs (``eager``) the gang's newest, by date,
    picks the run: only the process's own checkpoints of that run count, by the same test
    within it, and only that run's are chosen among; dates never make another run's own
    checkpoint win over the gang's (a node whose clock ran ahead in an old run would load its
    old save forever).  So ``if rank == 0: save()`` is loaded by every process, a process that
    saves its own state every attempt gets its own back (ranks never cross-load), one old
    save of its own (a failure save of an earlier attempt or run) does not pin a process to
    it once the gang has saved since, and a sharded checkpoint is loaded everywhere.  For
    rank 0 this is every checkpoint but other writers'."""
    own = [h for h in headers if not h.sharded and h.position == position]
    gang = [h for h in headers if h.sharded or h.position == RANK0]
    chosen = headers
    if own and not position.is_rank0 and gang:
        if not within_task:
            # Dates of different runs come from different machines' clocks: keep the run of
            # the gang's newest and order inside it as its task's retry would.
            run = max(gang, key=sort_key(False)).scope.run
            chosen = [h for h in headers if h.scope.run == run]
            own = [h for h in own if h.scope.run == run]
            gang = [h for h in gang if h.scope.run == run]
        if own:
            order = sort_key(within_task=True)
            mine, theirs = max(own, key=order), max(gang, key=order)
            generation = (mine.scope.run, mine.scope.attempt)
            if generation != (theirs.scope.run, theirs.scope.attempt) and order(mine) < order(
                theirs
            ):
                own = []  # older than the gang's newest, from another attempt: stale
    if not own:
        return [h for h in headers if h.sharded or h.position == RANK0]
    return [h for h in chosen if h.sharded or h.position == position]


def newest(
    headers: Sequence[ManifestHeader],
    *,
    within_task: bool = False,
    position: Optional[Position] = None,
) -> Optional[ManifestHeader]:
    """The newest header flagged ``latest`` by :func:`sort_key`, or None: what a retry
    (``within_task``), ``resume`` (one task per step and split in a run: ``within_task``) and
    ``eager`` load.

    ``position`` None: among every writer's (a client, the CLI, retention); a position: among
    the latest ones :func:`visible_to` that process."""
    marked = [h for h in headers if h.latest]
    if position is not None:
        marked = visible_to(marked, position, within_task)
    if not marked:
        return None
    return max(marked, key=sort_key(within_task))


@dataclass
class Resolution:
    """The outcome of a load policy: the checkpoint to load (or None) and why, for the log."""

    header: Optional[ManifestHeader]
    reason: str
    #: Every checkpoint of the task itself when the policy listed them (retry attempts): the
    #: task's logical clock learns the newest date from it without listing again.
    seen: Optional[list[ManifestHeader]] = None


def resolve(
    storage: Storage,
    policy: str,
    scope: Scope,
    origin_runs: Callable[[], Iterable[str]] = lambda: (),
    position: Position = RANK0,
) -> Resolution:
    """Apply ``policy`` for the process at ``position`` of a task starting in ``scope`` (the
    step's own process of node ``n`` is ``Position(n, 0)``).

    ``origin_runs`` returns the origin run ids of a ``resume`` chain, nearest first; it is called
    only when the task has no checkpoint of its own and iterated only until one is found (older
    origins cost metadata lookups).
    """
    validate_policy(policy)
    if policy == "none":
        return Resolution(None, "load_policy='none': nothing is loaded automatically")
    seen = None
    if scope.attempt > 0:
        seen = list_headers(storage, scope.task_prefix())
        h = newest(seen, within_task=True, position=position)
        if h is not None:
            return Resolution(
                h, "latest checkpoint of this task (retry attempt %d)" % scope.attempt, seen
            )
    for run in origin_runs():
        # A run has one task per step and foreach split: order it as that task's retry would.
        h = newest(
            list_headers(storage, scope.run_prefix(run)), within_task=True, position=position
        )
        if h is not None:
            return Resolution(
                h, "latest checkpoint of this step in origin run %s (resume)" % run, seen
            )
    if policy == "eager":
        h = newest(list_headers(storage, scope.lineage_prefix()), position=position)
        if h is not None:
            return Resolution(h, "latest checkpoint of this step from an earlier run (eager)", seen)
        return Resolution(
            None, "no earlier checkpoint of this step in namespace %s" % scope.namespace, seen
        )
    if scope.attempt > 0:
        return Resolution(None, "no checkpoint saved by earlier attempts of this task", seen)
    return Resolution(None, "first attempt of a new run (load_policy='fresh')")
