"""Pruning: apply a retention policy to a store's checkpoints, group by group.

Each group's checkpoints become :class:`.retention.Item` values in the order
:func:`.policies.newest` uses; :func:`.retention.plan` decides what its rules keep (and why);
what no rule keeps is deleted (its manifest only: blobs are reclaimed by :mod:`.gc`).  Pinned
checkpoints and the keys in ``protect`` are kept; a damaged checkpoint (its manifest does not
parse) is kept and reported, never deleted or counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable

from ..storage.base import Storage
from . import pins, policies, retention
from .layout import step_prefix_of
from .manifest import ManifestHeader


def prune(
    storage: Storage,
    summaries: dict[str, dict],
    headers: Sequence[ManifestHeader],
    policy: retention.Retention,
    *,
    group_of: Callable[[ManifestHeader], str],
    dry_run: bool = False,
    protect_newest: bool = True,
    protect: Iterable[str] = (),
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
    grouped: dict[str, list[ManifestHeader]] = {}
    for h in headers:
        grouped.setdefault(group_of(h), []).append(h)
    out = []
    for group, members in sorted(grouped.items()):
        order = policies.sort_key(within_task)  # the order policies.newest uses
        items = [
            retention.Item(
                h.key, order(h), h.created_ms, summaries[h.key].get("metadata") or {}, h.latest
            )
            for h in members
        ]
        decision = retention.plan(
            items,
            policy,
            frozenset(pinned),
            group=group,
            protect_newest=protect_newest,
            protect=frozenset(protect),
        )
        if not dry_run and decision.delete:
            storage.delete_many(decision.delete, workers)
        out.append((group, decision))
    _keep_damaged(out, damaged, group_of, summaries)
    return out


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
