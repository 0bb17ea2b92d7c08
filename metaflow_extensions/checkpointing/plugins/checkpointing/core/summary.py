"""Checkpoint summaries for listings, with a per-step index that is only ever a hint.

Listing a step's checkpoints is one prefix listing of manifest keys, and a key already tells the
scope, name, time and ``latest`` flag.  Metadata, size and save statistics live in the manifest.
To list 1,000 checkpoints without 1,000 manifest reads, readers keep a small summary index per
step prefix (``indexes/<ns>/<flow>/<step>/summaries.json``, keys in :mod:`.layout`):

* the listing stays the truth: only keys present in it are reported, so a deleted checkpoint
  never shows up, and a committed one missing from the index is read from its manifest;
* an index entry describes an immutable manifest (keys are unique), so it cannot go stale;
* the index is rewritten by the reader that had to read many manifests; a lost race between two
  readers only costs a later reader some manifest reads;
* a task writes the summaries of its own saves once, when it finishes
  (``indexes/<ns>/<flow>/<step>/<foreach>/<run>/<task>/attempt-<n>.json``; each node of a
  ``@parallel`` gang its own, ``attempt-<n>-w<node>.0.json``), so the first listing of a task
  with many checkpoints reads one object per writing process instead of one manifest per
  checkpoint; the same object records how the attempt ended (``"ended"``: one of
  :data:`ENDINGS`), which listings show as a checkpoint's ``task_status``
  (:func:`attempts_ended`; None while the attempt runs, or for a summary written before it was
  recorded);
* a malformed index (or entry) is ignored: the manifests are read instead;
* a manifest that cannot be parsed (truncated, tampered with, written by a newer release) does
  not fail the listing: its summary is :func:`damaged` (``damaged=True`` and the ``error``),
  and it is never recorded in an index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Union

from ..errors import CheckpointException, ManifestError
from ..storage.base import Storage
from .layout import (
    is_task_summary_key,
    step_index_key,
    step_prefix_of,
    task_prefix_of,
    task_summaries_prefix,
    task_summary_key,
)
from .manifest import SIZE_LIMIT, Manifest, ManifestHeader, parse_key
from .position import RANK0, Position

INDEX_FORMAT = "metaflow-checkpointing-summaries/1"
#: Rewrite a step's index once a listing had to read this many manifests (or all of them).
REWRITE_AFTER = 8

#: How an attempt of a task ended, as its summary records it (``"ended"``): it returned
#: (``"succeeded"``), raised or was interrupted (``"failed"``), or stopped in
#: ``current.checkpoint.pause()`` (``"paused"``: to be resumed, not a failure).
SUCCEEDED, FAILED, PAUSED = "succeeded", "failed", "paused"
ENDINGS = (SUCCEEDED, FAILED, PAUSED)


def summarize(manifest: Manifest) -> dict:
    """What a listing shows of a checkpoint, beyond its key."""
    return {
        "metadata": manifest.metadata,
        "size": manifest.size,
        "files": len(manifest.files),
        "stats": manifest.stats,
        "source": manifest.source,
    }


def damaged(error: str) -> dict:
    """The summary of a checkpoint whose manifest cannot be parsed: listed, flagged ``damaged``
    with the parser's ``error``; it has no metadata, size or files that can be trusted."""
    return {
        "metadata": {},
        "size": 0,
        "files": 0,
        "stats": {},
        "source": {},
        "damaged": True,
        "error": error,
    }


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < SIZE_LIMIT


def _valid_entries(data: Any) -> dict[str, dict]:
    """The well-formed entries of a summary index body; anything else is dropped (it is only a
    hint: what is dropped is read from the manifests)."""
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    out = {}
    for key, e in entries.items():
        if (
            isinstance(e, dict)
            and isinstance(e.get("metadata"), dict)
            and _count(e.get("size"))
            and _count(e.get("files"))
            and isinstance(e.get("stats", {}), dict)
            and isinstance(e.get("source", {}), dict)
        ):
            # Only the known fields: a hint can neither flag a checkpoint damaged nor add any.
            out[key] = {f: e[f] for f in ("metadata", "size", "files", "stats", "source") if f in e}
    return out


def _read_json(storage: Storage, key: str) -> Any:
    """A hint object's JSON, or None when absent, unreadable or malformed."""
    try:
        return json.loads(storage.get_bytes(key))
    except (CheckpointException, ValueError, RecursionError):
        return None


def write_task_summaries(
    storage: Storage,
    task_prefix: str,
    attempt: int,
    manifests: Sequence[Manifest],
    position: Position = RANK0,
    ended: Optional[str] = None,
    ending_only: bool = False,
) -> None:
    """Record what the process at ``position`` committed in one attempt of a task (best
    effort: it is only a hint) and, when given, how the attempt ``ended`` (one of
    :data:`ENDINGS`).  Nothing is written when nothing was committed (no listing shows the
    attempt then), unless ``ending_only`` and ``ended``: then a summary with no entries
    records the ending alone, for an attempt whose checkpoints are elsewhere (in a local tier,
    their upload failed) so that readers still show how it ended (paused, not failed)."""
    if not manifests and not (ending_only and ended is not None):
        return
    if ended is not None and ended not in ENDINGS:
        raise ValueError("ended=%r is not one of %s" % (ended, ", ".join(ENDINGS)))
    body: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "entries": {m.key: summarize(m) for m in manifests},
    }
    if ended is not None:
        body["ended"] = ended
    key = task_summary_key(task_prefix, attempt, position)
    try:
        storage.put_bytes(key, json.dumps(body).encode())
    except CheckpointException:
        pass


#: ``attempt-<n>.json`` (rank 0) or ``attempt-<n>-w<node>.<local>.json`` (another node), the
#: names :func:`.layout.task_summary_key` gives.
_SUMMARY_NAME = re.compile(r"attempt-(0|[1-9][0-9]{0,8})(-w[0-9]+\.[0-9]+)?\.json")


def _parse_summary_name(key: str) -> Optional[tuple[int, bool]]:
    """``(attempt, is_rank0)`` of a task summary key, None for any other key."""
    m = _SUMMARY_NAME.fullmatch(key.rsplit("/", 1)[-1])
    return (int(m.group(1)), m.group(2) is None) if m else None


def _ended_of(data: Any) -> Optional[str]:
    """The ``ended`` of a task summary body, None when absent or not one of :data:`ENDINGS`."""
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        return None
    ended = data.get("ended")
    return ended if ended in ENDINGS else None


def _attempts(storage: Storage, task_prefix: str) -> dict[int, tuple[Optional[str], bool]]:
    """``(ended, final)`` of each attempt of a task with a summary: ``final`` when it is the
    rank-0 process's, written once at the attempt's end, so what it says never changes."""
    chosen: dict[int, tuple[bool, str]] = {}
    for obj in storage.list(task_summaries_prefix(task_prefix)):
        parsed = _parse_summary_name(obj.key)
        if parsed is None:
            continue
        attempt, rank0 = parsed
        if attempt not in chosen or (rank0 and not chosen[attempt][0]):
            chosen[attempt] = (rank0, obj.key)
    return {a: (_ended_of(_read_json(storage, k)), r) for a, (r, k) in chosen.items()}


def attempts_ended(storage: Storage, task_prefix: str) -> dict[int, Optional[str]]:
    """How each attempt of the task at ``task_prefix`` ended, by attempt number, as its
    summaries record it (one listing, then one read per attempt): the rank-0 process's
    summary when present, else any node's of a ``@parallel`` gang.  An attempt without a
    summary (running, killed, or that committed nothing) is absent; one whose summary predates
    ``ended`` (or is malformed) maps to None."""
    return {a: ended for a, (ended, _) in _attempts(storage, task_prefix).items()}


def last_recorded(
    storage: Storage, task_prefixes: Sequence[str]
) -> dict[str, Optional[tuple[int, Optional[str]]]]:
    """The last recorded attempt of each task at ``task_prefixes`` and how it ended: its
    summary with the highest attempt number (:func:`attempts_ended`, the tasks in parallel);
    None: no summary.  A resume continues after this attempt, whatever attempts happen to
    have checkpoints in a (status-filtered) listing."""
    tasks = sorted(set(task_prefixes))
    if not tasks:
        return {}
    with ThreadPoolExecutor(min(len(tasks), 16)) as pool:
        found = list(pool.map(lambda t: attempts_ended(storage, t), tasks))
    return {t: ((max(e), e[max(e)]) if e else None) for t, e in zip(tasks, found)}


def last_endings(storage: Storage, task_prefixes: Sequence[str]) -> dict[str, Optional[str]]:
    """How the last recorded attempt of each task ended (:func:`last_recorded`; None: no
    summary, or one that predates ``ended``)."""
    return {t: v[1] if v else None for t, v in last_recorded(storage, task_prefixes).items()}


def _slot(scope: Any, attempt: Optional[int] = None) -> str:
    """An attempt of a task (``scope``'s, or ``attempt``) within its step's index:
    ``<foreach>/<run>/<task>/<attempt>``."""
    attempt = scope.attempt if attempt is None else attempt
    return "%s/%s/%s/%d" % (scope.foreach, scope.run, scope.task, attempt)


def _valid_endings(data: Any) -> dict[str, Optional[str]]:
    """The well-formed ``ended`` map of a step index body (a hint: anything else is dropped)."""
    ended = data.get("ended") if isinstance(data, dict) else None
    if not isinstance(ended, dict) or data.get("format") != INDEX_FORMAT:
        return {}
    return {
        k: v
        for k, v in ended.items()
        if isinstance(k, str) and k.count("/") == 3 and (v is None or v in ENDINGS)
    }


def endings(storage: Storage, headers: Sequence[ManifestHeader]) -> dict[str, Optional[str]]:
    """How the attempt that saved each task checkpoint of ``headers`` ended, by key (None:
    running, unknown, or a named checkpoint).

    An attempt's ending, once its rank-0 summary is written, never changes: the step's summary
    index keeps those it learned (``"ended"``, by :func:`_slot`), so a listing reads the
    summaries (:func:`attempts_ended`, the tasks in parallel) only of attempts not known there
    yet: running, killed before their end, or new since the last listing."""
    groups: dict[str, list[ManifestHeader]] = {}
    for h in headers:
        if not h.scope.is_library:
            groups.setdefault(step_prefix_of(h.key), []).append(h)
    out: dict[str, Optional[str]] = {}
    for step_prefix, group in groups.items():
        index_key = step_index_key(step_prefix)
        body = _read_json(storage, index_key)
        known = _valid_endings(body)
        unknown = {task_prefix_of(h.key): h.scope for h in group if _slot(h.scope) not in known}
        tasks = sorted(unknown)
        learned: dict[str, Optional[str]] = {}
        fresh: dict[tuple[str, int], Optional[str]] = {}
        if tasks:
            with ThreadPoolExecutor(min(len(tasks), 16)) as pool:
                for task, attempts in zip(tasks, pool.map(lambda t: _attempts(storage, t), tasks)):
                    for attempt, (ended, final) in attempts.items():
                        fresh[(task, attempt)] = ended
                        if ended is not None or final:  # it will never change: keep it
                            learned[_slot(unknown[task], attempt)] = ended
        for h in group:
            slot = _slot(h.scope)
            out[h.key] = (
                known[slot]
                if slot in known
                else fresh.get((task_prefix_of(h.key), h.scope.attempt))
            )
        if any(k not in known for k in learned):
            body = {
                "format": INDEX_FORMAT,
                "entries": _valid_entries(body),
                "ended": {**known, **learned},
            }
            try:
                storage.put_bytes(index_key, json.dumps(body).encode("utf-8"))
            except CheckpointException:
                pass  # a read-only reader reads the summaries again next time
    return out


def _parsed(keys: Any) -> list[ManifestHeader]:
    """Headers of the manifest keys among ``keys``."""
    out = []
    for key in keys:
        try:
            out.append(parse_key(key))
        except ManifestError:
            continue
    return out


class SummaryIndex:
    """Summaries of committed checkpoints, read from indexes where they help.

    Parameters
    ----------
    storage : Storage
        The checkpoint store backend.
    read_many : callable
        Reads manifests by key (in parallel), raising for a missing or invalid one.
    """

    def __init__(self, storage: Storage, read_many: Callable[[Sequence[str]], list[Manifest]]):
        self._storage = storage
        self._read_many = read_many

    def summaries(self, headers: Sequence[ManifestHeader]) -> dict[str, dict]:
        """Summary of every header's checkpoint, by key."""
        groups: dict[str, list[ManifestHeader]] = {}
        for h in headers:
            groups.setdefault(step_prefix_of(h.key), []).append(h)
        out: dict[str, dict] = {}
        for step_prefix, group in groups.items():
            body = _read_json(self._storage, step_index_key(step_prefix))
            known = _valid_entries(body)  # absent, unreadable or malformed: only a hint
            missing = [h.key for h in group if h.key not in known]
            fresh = self._from_task_summaries(missing)
            missing = [k for k in missing if k not in fresh]
            if missing:
                fresh.update(self._read_manifests(missing))
            for h in group:
                out[h.key] = known.get(h.key) or fresh[h.key]
            readable = len(fresh)
            fresh = {k: v for k, v in fresh.items() if not v.get("damaged")}
            readable = len(group) - (readable - len(fresh))  # damaged ones are never indexed
            if fresh and (len(fresh) >= REWRITE_AFTER or len(fresh) == readable):
                stale_possible = any(k not in out for k in known)
                known.update(fresh)
                self._write_index(step_prefix, known, _valid_endings(body), stale_possible)
        return out

    def _read_manifests(self, keys: Sequence[str]) -> dict[str, dict]:
        """Summaries of ``keys`` from their manifests; a manifest that does not parse gets a
        :func:`damaged` summary instead of failing the listing."""
        try:
            return {m.key: summarize(m) for m in self._read_many(keys)}
        except ManifestError:
            pass  # at least one is damaged: read each on its own to know which

        def one(key: str) -> Union[dict, ManifestError]:
            try:
                return summarize(self._read_many([key])[0])
            except ManifestError as exc:
                return exc

        with ThreadPoolExecutor(max(1, min(len(keys), 16))) as pool:
            results = list(pool.map(one, keys))
        return {
            k: damaged(r.message) if isinstance(r, ManifestError) else r
            for k, r in zip(keys, results)
        }

    def _from_task_summaries(self, keys: Sequence[str]) -> dict[str, dict]:
        """Summaries the writing tasks recorded, when that saves reads (few tasks, many keys)."""
        tasks = {task_prefix_of(k) for k in keys}
        if not tasks or len(tasks) * 4 > len(keys):
            return {}
        wanted = set(keys)
        found: dict[str, dict] = {}
        for task in tasks:
            for obj in self._storage.list(task_summaries_prefix(task)):
                if not is_task_summary_key(obj.key):
                    continue
                entries = _valid_entries(_read_json(self._storage, obj.key))
                found.update({k: v for k, v in entries.items() if k in wanted})
        return found

    def _write_index(
        self,
        step_prefix: str,
        entries: dict[str, dict],
        ended: dict[str, Optional[str]],
        relist: bool,
    ) -> None:
        # ``ended``: the attempts' endings :func:`endings` recorded in the index, as read by
        # this listing (one GET of the index per listing, not a second one to write it).
        if relist:
            # The index may describe deleted checkpoints: keep only what is still listed.
            live = {o.key for o in self._storage.list(step_prefix)}
            entries = {k: v for k, v in entries.items() if k in live}
            slots = {_slot(h.scope) for h in _parsed(live)}
            ended = {k: v for k, v in ended.items() if k in slots}
        body: dict[str, Any] = {"format": INDEX_FORMAT, "entries": entries}
        if ended:
            body["ended"] = ended
        try:
            self._storage.put_bytes(step_index_key(step_prefix), json.dumps(body).encode("utf-8"))
        except CheckpointException:
            pass  # a read-only reader still gets its listing
