"""Checkpoint summaries for listings, with a per-step index that is only ever a hint.

Listing a step's checkpoints is one prefix listing of manifest keys, and a key already tells the
scope, name, time and ``latest`` flag.  Metadata, size and save statistics live in the manifest.
To list 1,000 checkpoints without 1,000 manifest reads, readers keep a small summary index per
step prefix (``indexes/<ns>/<flow>/<step>/summaries.json``):

* the listing stays the truth: only keys present in it are reported, so a deleted checkpoint
  never shows up, and a committed one missing from the index is read from its manifest;
* an index entry describes an immutable manifest (keys are unique), so it cannot go stale;
* the index is rewritten by the reader that had to read many manifests; a lost race between two
  readers only costs a later reader some manifest reads;
* a task writes the summaries of its own saves once, when it finishes
  (``indexes/<ns>/<flow>/<step>/<foreach>/<run>/<task>/attempt-<n>.json``), so the first listing
  of a task with many checkpoints reads one object instead of one manifest per checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Callable

from ..errors import CheckpointException
from ..storage.base import Storage
from .manifest import Manifest, ManifestHeader
from .scope import MANIFESTS

INDEXES = "indexes"
INDEX_FORMAT = "metaflow-checkpointing-summaries/1"
#: Rewrite a step's index once a listing had to read this many manifests (or all of them).
REWRITE_AFTER = 8


def summarize(manifest: Manifest) -> dict:
    """What a listing shows of a checkpoint, beyond its key."""
    return {
        "metadata": manifest.metadata,
        "size": manifest.size,
        "files": len(manifest.files),
        "stats": manifest.stats,
        "source": manifest.source,
    }


def _step_of(key: str) -> str:
    """``manifests/<ns>/<flow>/<step>/`` of a manifest key."""
    return "/".join(key.split("/")[:4]) + "/"


def index_key(step_prefix: str) -> str:
    return INDEXES + step_prefix[len(MANIFESTS) :] + "summaries.json"


def _task_of(key: str) -> str:
    """``manifests/<ns>/<flow>/<step>/<foreach>/<run>/<task>/`` of a manifest key."""
    return key.rsplit("/", 1)[0] + "/"


def task_summary_key(task_prefix: str, attempt: int) -> str:
    """Where a task writes the summaries of the checkpoints one attempt saved."""
    return INDEXES + task_prefix[len(MANIFESTS) :] + "attempt-%d.json" % attempt


def write_task_summaries(
    storage: Storage, task_prefix: str, attempt: int, manifests: Sequence[Manifest]
) -> None:
    """Record what one attempt of a task saved (best effort: it is only a hint)."""
    if not manifests:
        return
    body = {"format": INDEX_FORMAT, "entries": {m.key: summarize(m) for m in manifests}}
    try:
        storage.put_bytes(task_summary_key(task_prefix, attempt), json.dumps(body).encode())
    except CheckpointException:
        pass


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
            groups.setdefault(_step_of(h.key), []).append(h)
        out: dict[str, dict] = {}
        for step_prefix, group in groups.items():
            known = self._read_index(step_prefix)
            missing = [h.key for h in group if h.key not in known]
            fresh = self._from_task_summaries(missing)
            missing = [k for k in missing if k not in fresh]
            if missing:
                fresh.update({m.key: summarize(m) for m in self._read_many(missing)})
            for h in group:
                out[h.key] = known.get(h.key) or fresh[h.key]
            if fresh and (len(fresh) >= REWRITE_AFTER or len(fresh) == len(group)):
                stale_possible = any(k not in out for k in known)
                known.update(fresh)
                self._write_index(step_prefix, known, relist=stale_possible)
        return out

    def _from_task_summaries(self, keys: Sequence[str]) -> dict[str, dict]:
        """Summaries the writing tasks recorded, when that saves reads (few tasks, many keys)."""
        tasks = {_task_of(k) for k in keys}
        if not tasks or len(tasks) * 4 > len(keys):
            return {}
        wanted = set(keys)
        found: dict[str, dict] = {}
        for task in tasks:
            prefix = INDEXES + task[len(MANIFESTS) :]
            for obj in self._storage.list(prefix):
                if not obj.key.rsplit("/", 1)[1].startswith("attempt-"):
                    continue
                try:
                    data = json.loads(self._storage.get_bytes(obj.key))
                    if data.get("format") != INDEX_FORMAT:
                        continue
                    entries = data["entries"]
                except (CheckpointException, ValueError, KeyError, AttributeError):
                    continue  # only a hint
                found.update({k: v for k, v in entries.items() if k in wanted})
        return found

    def _read_index(self, step_prefix: str) -> dict[str, dict]:
        try:
            data = json.loads(self._storage.get_bytes(index_key(step_prefix)))
            if data.get("format") == INDEX_FORMAT and isinstance(data.get("entries"), dict):
                return data["entries"]
        except (CheckpointException, ValueError, AttributeError):
            pass  # absent or unreadable: it is only a hint
        return {}

    def _write_index(self, step_prefix: str, entries: dict[str, dict], relist: bool) -> None:
        if relist:
            # The index may describe deleted checkpoints: keep only what is still listed.
            live = {o.key for o in self._storage.list(step_prefix)}
            entries = {k: v for k, v in entries.items() if k in live}
        body = {"format": INDEX_FORMAT, "entries": entries}
        try:
            self._storage.put_bytes(index_key(step_prefix), json.dumps(body).encode("utf-8"))
        except CheckpointException:
            pass  # a read-only reader still gets its listing
