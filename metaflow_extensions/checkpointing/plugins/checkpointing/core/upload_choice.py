"""What the end of an ``upload="end"`` (or ``upload_errors="warn"``) task uploads, and which of
a writer's tier checkpoints the flow's store has made moot: pure choices over manifest headers
(``task/upload_policy.py`` does the I/O and the uploads; docs/upload.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

from ..errors import CheckpointException
from .manifest import ManifestHeader, parse_key
from .policies import newest, sort_key, visible_to
from .position import Position
from .retention import Item, Retention
from .store import CheckpointStore

__all__ = ["by_task", "moot", "moot_in", "superseded", "to_upload"]


def to_upload(
    tier: CheckpointStore,
    headers: Sequence[ManifestHeader],
    position: Position,
    retention: Optional[Retention],
    in_remote: set,
) -> list[str]:
    """The keys the end of a task attempt uploads, most important first, among ``headers`` (the
    task's checkpoints of every attempt, in the tier and in the flow's store): the newest
    ``latest=True`` one ``position`` would load on retry, the newest of each series (name) it
    sees, then the best by each ``keep_best`` rule (per series, among those in the tier);
    those known in the flow's store (``in_remote``) are left out."""
    seen = visible_to(list(headers), position, True)
    keys: list[str] = []
    found = newest(seen, within_task=True, position=position)
    if found is not None:
        keys.append(found.key)
    order = sort_key(True)
    # The series and the best are this writer's (and sharded ones): another node's or rank's
    # is its own writer's to upload.
    mine = [h for h in seen if h.sharded or h.position == position]
    series: dict[str, ManifestHeader] = {}
    for h in mine:  # best.pt and last.pt: the newest of each, whatever its latest flag
        if h.name not in series or order(h) > order(series[h.name]):
            series[h.name] = h
    keys += [h.key for h in sorted(series.values(), key=order, reverse=True) if h.key not in keys]
    rules = retention.keep_best if retention is not None else ()
    local = [h for h in mine if h.key not in in_remote]  # the best among those in the tier
    if rules and local:
        summaries = tier.summaries(local)
        by_name: dict[str, list[Item]] = {}
        for h in local:
            meta = summaries.get(h.key, {}).get("metadata") or {}
            by_name.setdefault(h.name, []).append(
                Item(h.key, order(h), h.created_ms, meta, h.latest)
            )
        for items in by_name.values():
            for rule in rules:
                keys += [k for k in rule.keeps(items).reasons if k not in keys]
    return [k for k in keys if k not in in_remote]


def superseded(headers: Sequence[ManifestHeader], in_remote: set) -> set[str]:
    """The keys of ``headers`` a retry never loads again: a ``latest=True`` one with a newer
    ``latest=True`` one of the same series (name) and writer (position) in the flow's store
    (``in_remote``): another node's or rank's newer upload never supersedes this writer's.  A
    ``latest=False`` one is never superseded (only its reference names it)."""
    order = sort_key(True)
    newest_uploaded: dict[tuple, tuple] = {}
    for h in (h for h in headers if h.latest and h.key in in_remote):
        series = (h.name, h.position)
        if series not in newest_uploaded or order(h) > newest_uploaded[series]:
            newest_uploaded[series] = order(h)
    return {
        h.key
        for h in headers
        if h.latest
        and (h.name, h.position) in newest_uploaded
        and order(h) < newest_uploaded[(h.name, h.position)]
    }


def by_task(keys: Iterable[str]) -> dict[str, list[ManifestHeader]]:
    """``keys`` parsed, grouped by their task's prefix (in order)."""
    out: dict[str, list[ManifestHeader]] = {}
    for key in keys:
        h = parse_key(key)
        out.setdefault(h.scope.task_prefix(), []).append(h)
    return out


def moot(ours: Sequence[ManifestHeader], remote: Sequence[ManifestHeader]) -> set[str]:
    """The keys of ``ours`` (one task's ``failed`` tier checkpoints) whose failure no longer
    matters: the flow's store (``remote``, that task's headers there) holds them, or a newer
    ``latest=True`` one of the same writer and series (:func:`superseded`)."""
    there = {h.key for h in remote}
    out: set[str] = set()
    for h in ours:
        same = [r for r in remote if r.position == h.position]
        if h.key in there or h.key in superseded([h] + same, there):
            out.add(h.key)
    return out


def moot_in(remote: CheckpointStore, keys: list[str]) -> set[str]:
    """Of these ``failed`` tier checkpoints, those the flow's store ``remote`` holds or
    supersedes (:func:`moot`): one listing per task, only when a sweep found an old failed
    one; a listing that fails keeps that task's (best effort)."""
    out: set[str] = set()
    for prefix, ours in by_task(keys).items():
        try:
            there = remote.headers(prefix)
        except CheckpointException:
            continue
        out |= moot(ours, there)
    return out
