"""Multi-writer checkpoints of ``@parallel`` (gang) steps: one logical checkpoint, one shard per
rank, committed once every rank's shard is stored.

Protocol (no barrier exists between nodes; the store is the rendezvous):

1. every rank uploads its files' blobs and writes its part (:func:`.layout.part_key`:
   ``parts/<control task's scope>/<id>/rank-<i>.json``);
2. rank 0 waits until all ``world`` parts exist (bounded), then writes one manifest whose files
   are the parts' files under ``rank-<i>/``, and removes the parts;
3. the other ranks wait until that manifest is listed (bounded), so ``save()`` returns on every
   rank only once the checkpoint is committed.

All ranks derive the checkpoint id from the same inputs (control task, attempt, name and the
number of the save), so they agree on it without talking to each other.  A rank that never writes
its part makes rank 0 time out naming it; nothing is committed, so a checkpoint with a missing
rank can never be listed or loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Callable, Optional

from ..errors import CheckpointIncomplete, ManifestError, StorageNotFound
from ..storage.base import Storage
from .commit import next_seq
from .layout import part_key, parts_prefix
from .manifest import ChunkRef, FileEntry, Manifest, now_ms, parse_key
from .scope import Scope
from .transfer import SaveStats, digest

#: ``Manifest.source["kind"]`` of a gang checkpoint; ``source["ranks"]`` is the world size.
KIND = "parallel"


def gang_id(scope: Scope, name: str, number: int) -> str:
    """The id every rank computes for its ``number``-th save of ``name`` in this attempt."""
    text = "%s|%s|%s|%d" % (scope.task_prefix(), scope.attempt, name, number)
    return digest(text.encode("utf-8"))[:16]


def rank_dir(rank: int) -> str:
    return "rank-%d" % rank


def write_part(storage: Storage, scope: Scope, id: str, rank: int, manifest: Manifest) -> None:
    """Store rank ``rank``'s shard description (its blobs are already stored)."""
    body = {
        "rank": rank,
        "files": [f.to_json() for f in manifest.files],
        "dirs": manifest.dirs,
        "stats": manifest.stats,
        "chunk_size": manifest.chunk_size,
    }
    storage.put_bytes(part_key(scope.task_prefix(), id, rank), json.dumps(body).encode())


def part_blobs(data: bytes, key: str) -> set[str]:
    """The blobs a stored part references (garbage collection keeps them until the gang's
    manifest, which references them too, replaces the part).

    Raises
    ------
    ManifestError
        The part cannot be parsed (nothing can be known about its blobs).
    """
    try:
        body = json.loads(data.decode("utf-8"))
        blobs = {c[0] for f in body["files"] for c in f["chunks"]}
        if not all(isinstance(b, str) for b in blobs):
            raise TypeError("a chunk's blob is not a string")
        return blobs
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError, IndexError) as exc:
        raise ManifestError(
            "@parallel part %s is unreadable (%s: %s)." % (key, type(exc).__name__, exc)
        ) from None


def _wait(
    check: Callable[[], Optional[object]], timeout: float, poll: float, describe: Callable[[], str]
):
    """Poll ``check`` until it returns something, backing off from 10 ms to ``poll`` seconds:
    ranks usually finish within milliseconds of each other, so a fixed long sleep would add
    itself to every gang save."""
    deadline = time.monotonic() + timeout
    delay = min(0.01, poll)
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise CheckpointIncomplete(describe())
        time.sleep(delay)
        delay = min(poll, delay * 2)


def commit(
    storage: Storage,
    scope: Scope,
    id: str,
    world: int,
    *,
    name: str,
    metadata: dict,
    latest: bool,
    timeout: float,
    poll: float = 0.2,
    created_ms: Optional[int] = None,
) -> Manifest:
    """Rank 0: wait for every part, then write the gang's manifest (last) and drop the parts.

    ``created_ms`` dates it (default: now); rank 0's task clock passes its own."""
    prefix = parts_prefix(scope.task_prefix(), id)

    def all_parts():
        keys = {o.key for o in storage.list(prefix)}
        return keys if len(keys) >= world else None

    def missing() -> str:
        have = {o.key for o in storage.list(prefix)}
        absent = [r for r in range(world) if part_key(scope.task_prefix(), id, r) not in have]
        return (
            "Checkpoint %r of @parallel task %s was not committed: rank(s) %s did not save "
            "their part within %g s (all %d ranks must call save() the same number of times)."
            % (name, scope.pathspec, ", ".join(map(str, absent)), timeout, world)
        )

    _wait(all_parts, timeout, poll, missing)
    files: list[FileEntry] = []
    dirs: list[str] = []
    stats = SaveStats()
    chunk_size = 0
    for rank in range(world):
        key = part_key(scope.task_prefix(), id, rank)
        try:
            part = json.loads(storage.get_bytes(key))
        except (StorageNotFound, ValueError) as exc:
            raise ManifestError(
                "Part %s of a @parallel checkpoint is unreadable: %s" % (key, exc)
            ) from None
        base = rank_dir(rank)
        dirs.append(base)
        dirs += ["%s/%s" % (base, d) for d in part.get("dirs", [])]
        for f in part["files"]:
            files.append(
                FileEntry(
                    path="%s/%s" % (base, f["path"]),
                    size=int(f["size"]),
                    mode=int(f["mode"]),
                    chunks=[ChunkRef(str(b), int(o), int(n)) for b, o, n in f["chunks"]],
                    digest=f.get("digest"),
                )
            )
        s = part.get("stats") or {}
        for field in ("files", "bytes_read", "bytes_uploaded", "bytes_deduplicated"):
            setattr(stats, field, getattr(stats, field) + int(s.get(field, 0)))
        chunk_size = chunk_size or int(part.get("chunk_size", 0))
    # A rank dir that holds files is implied by them; keep only empty ones.
    dirs = [d for d in dirs if not any(f.path.startswith(d + "/") for f in files)]

    manifest = Manifest(
        id=id,
        name=name,
        scope=scope,
        latest=latest,
        created_ms=now_ms() if created_ms is None else created_ms,
        seq=next_seq(),
        metadata=metadata,
        files=files,
        dirs=dirs,
        source={"kind": KIND, "ranks": world},
        stats=stats.to_json(),
        chunk_size=chunk_size,
    )
    storage.put_bytes(manifest.key, manifest.dumps())
    try:
        storage.delete_many([o.key for o in storage.list(prefix)])
    except Exception:  # noqa: BLE001 - leftover parts are harmless (GC ignores them)
        pass
    return manifest


def wait_committed(
    storage: Storage, scope: Scope, id: str, name: str, timeout: float, poll: float = 0.2
) -> str:
    """Ranks > 0: the key of the gang's manifest once rank 0 has written it."""

    def find():
        for o in storage.list(scope.task_prefix()):
            try:
                if parse_key(o.key).id == id:
                    return o.key
            except ManifestError:
                continue
        return None

    return _wait(
        find,
        timeout,
        poll,
        lambda: (
            "Checkpoint %r of @parallel task %s was not committed by rank 0 within %g s."
            % (name, scope.pathspec, timeout)
        ),
    )


def shard(manifest: Manifest, rank: int) -> Manifest:
    """The part of a gang checkpoint that belongs to ``rank``, with paths relative to it."""
    base = rank_dir(rank) + "/"
    files = [
        replace(f, path=f.path[len(base) :]) for f in manifest.files if f.path.startswith(base)
    ]
    dirs = [d[len(base) :] for d in manifest.dirs if d.startswith(base)]
    return replace(manifest, files=files, dirs=dirs)


def is_gang(manifest: Manifest) -> bool:
    return manifest.source.get("kind") == KIND
