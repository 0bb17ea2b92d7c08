"""Pruning: apply a retention policy to a store's checkpoints, group by group.

Each group's checkpoints become :class:`.retention.Item` values in the order
:func:`.policies.newest` uses; :func:`.retention.plan` decides what its rules keep (and why);
what no rule keeps is deleted (its manifest only: blobs are reclaimed by :mod:`.gc`).  Pinned
checkpoints and the keys in ``protect`` are kept; a damaged checkpoint (its manifest does not
parse) is kept and reported, never deleted or counted.

With ``expire_after_days`` each checkpoint's age is its manifest's mtime in a listing of the
store (the one its header came from, :func:`.policies.listed_mtime`), against the store's
"now" (:func:`.store_clock.now`): both by the store's clock, so a
writer whose clock is off by days neither expires nor keeps its checkpoints wrongly (the
``created_ms`` in a key is the writer's clock).  A dry run probes the store's clock too (so it
decides as the real run would); only if the probe cannot be written (read-only credentials) does
it fall back to this machine's clock, and says so.

A paused task (``current.checkpoint.pause()``) is a promised resume point: the caller finds its
newest ``latest=True`` checkpoints with :func:`resume_points` (from each task's last recorded
ending) and
passes them in ``protect``, so neither the keep rules across runs nor expiry delete them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Callable, Optional, Union

from ..errors import StorageError
from ..storage.base import Storage
from . import pins, policies, retention, store_clock
from .layout import step_prefix_of, task_prefix_of
from .manifest import ManifestHeader
from .summary import PAUSED


def prune(
    storage: Storage,
    summaries: dict[str, dict],
    headers: Sequence[ManifestHeader],
    policy: retention.Retention,
    *,
    group_of: Callable[[ManifestHeader], str],
    dry_run: bool = False,
    protect_newest: bool = True,
    protect: Union[Iterable[str], Mapping[str, str]] = (),
    within_task: bool = False,
    workers: int = 8,
) -> list[tuple[str, retention.Plan]]:
    """Apply ``policy`` to each group of ``headers`` (``summaries``: their summaries by key,
    :meth:`.store.CheckpointStore.summaries`); delete what no rule keeps unless ``dry_run``.

    Returns ``(group, plan)`` per group, sorted by group; see
    :meth:`.store.CheckpointStore.prune` for what is always kept.
    """
    # A damaged checkpoint (its manifest does not parse) is kept and reported, never
    # deleted or counted: retention cannot know what it is; the user deletes it by key.
    damaged = [h for h in headers if summaries[h.key].get("damaged")]
    headers = [h for h in headers if not summaries[h.key].get("damaged")]
    pinned: set = set()
    for prefix in {step_prefix_of(h.key) for h in headers}:
        pinned |= pins.pinned_under(storage, prefix)
    ages, clock_warning = _ages(storage, headers, policy, dry_run)
    grouped: dict[str, list[ManifestHeader]] = {}
    for h in headers:
        grouped.setdefault(group_of(h), []).append(h)
    out = []
    for group, members in sorted(grouped.items()):
        order = policies.sort_key(within_task)  # the order policies.newest uses
        items = [
            retention.Item(
                h.key,
                order(h),
                h.created_ms,
                summaries[h.key].get("metadata") or {},
                h.latest,
                ages.get(h.key),
            )
            for h in members
        ]
        decision = retention.plan(
            items,
            policy,
            frozenset(pinned),
            group=group,
            protect_newest=protect_newest,
            protect=protect if isinstance(protect, Mapping) else frozenset(protect),
        )
        if clock_warning:
            decision.warnings.append(clock_warning)
        if not dry_run and decision.delete:
            storage.delete_many(decision.delete, workers)
        out.append((group, decision))
    _keep_damaged(out, damaged, group_of, summaries)
    return out


def resume_points(
    headers: Sequence[ManifestHeader], last_ended: Mapping[str, Optional[str]]
) -> dict[str, str]:
    """The checkpoints a ``resume`` of each paused task among ``headers`` loads, each with why
    it must be kept: per task whose last RECORDED attempt ended ``"paused"`` (``last_ended``:
    by task prefix, :func:`.summary.last_endings`), its newest ``latest=True`` checkpoint
    among ``headers`` in the order a retry or ``resume`` uses, one per name and writer (each
    process of a gang resumes from its own).  The ending is the task's, not that of the last
    attempt among ``headers``: a listing of uploaded checkpoints may lack the paused attempt
    (its end upload failed), and resume then loads an earlier attempt's.  A failed or
    succeeded task has none: its checkpoints expire like any other."""
    tasks: dict[str, list[ManifestHeader]] = {}
    for h in headers:
        if not h.scope.is_library:
            tasks.setdefault(task_prefix_of(h.key), []).append(h)
    order = policies.sort_key(within_task=True)
    out: dict[str, str] = {}
    for task, members in tasks.items():
        if last_ended.get(task) != PAUSED:
            continue
        writers: dict[tuple, list[ManifestHeader]] = {}
        for h in members:
            if h.latest:
                writers.setdefault((h.name, None if h.sharded else h.position), []).append(h)
        for candidates in writers.values():
            newest = max(candidates, key=order)
            out[newest.key] = "newest latest=True of paused task %s: its resume point" % (
                newest.scope.pathspec
            )
    return out


def _ages(
    storage: Storage,
    headers: Sequence[ManifestHeader],
    policy: retention.Retention,
    dry_run: bool,
) -> tuple[dict[str, float], str]:
    """Age in days of each of ``headers`` by the store's clock (none without expiry), and a
    warning when a dry run had to use this machine's clock instead."""
    if policy.expire_after_days is None or not headers:
        return {}, ""
    warning = ""
    try:
        now = store_clock.now(storage)
    except StorageError as exc:
        if not dry_run:
            raise
        now = time.time()
        warning = (
            "Dry run: the store's clock could not be read (%s); ages are judged by this "
            "machine's clock, which a real run does not do." % exc.message
        )
    mtimes: dict[str, float] = {}
    undated = []
    for h in headers:
        listed, mtime = policies.listed_mtime(h)
        if not listed:
            undated.append(h)
        elif mtime is not None:
            mtimes[h.key] = mtime
    # Only headers not from a listing (built by hand) need one: a prune after a listing
    # reads the prefix once.
    for prefix in _listing_prefixes(undated):
        for o in storage.list(prefix):
            if o.mtime is not None:
                mtimes.setdefault(o.key, o.mtime)
    wanted = {h.key for h in headers}
    ages = {k: (now - m) / 86400.0 for k, m in mtimes.items() if k in wanted}
    return ages, warning


def _listing_prefixes(headers: Sequence[ManifestHeader]) -> list[str]:
    """The fewest listings that date ``headers``: a task's prefix when a step has one task
    among them (a prune after a save), else the step's."""
    tasks_of: dict[str, set[str]] = {}
    for h in headers:
        tasks_of.setdefault(step_prefix_of(h.key), set()).add(task_prefix_of(h.key))
    return sorted(
        next(iter(tasks)) if len(tasks) == 1 else step for step, tasks in tasks_of.items()
    )


def _keep_damaged(
    plans: list[tuple[str, retention.Plan]],
    damaged: Sequence[ManifestHeader],
    group_of: Callable[[ManifestHeader], str],
    summaries: dict[str, dict],
) -> None:
    """Record each damaged checkpoint in its group's plan as kept ("damaged"), with a warning
    that names it and how to delete it."""
    by_group = dict(plans)
    for h in damaged:
        group = group_of(h)
        if group not in by_group:
            by_group[group] = retention.Plan()
            plans.append((group, by_group[group]))
        by_group[group].keep[h.key] = ["damaged"]
        by_group[group].warnings.append(
            "Kept a damaged checkpoint (retention neither deletes nor counts it): %s"
            % summaries[h.key]["error"]
        )
    plans.sort(key=lambda p: p[0])
