"""Sharded checkpoints (``save(sharded=True)``, ADR 004): one logical checkpoint with a shard per
participant, committed once every participant's shard is stored; and the gone markers that stop
the waits of a sharded save as soon as a participant will never save.

Participants (:class:`Participant`) are the nodes of a ``@parallel`` gang (``kind="node"``) or
the ranks of a ``torchrun`` worker group (``kind="rank"``); a process that is neither saves a
sharded checkpoint of one participant.  Protocol (no barrier exists between processes; the store
is the rendezvous):

1. every participant uploads its files' blobs and writes its part (:func:`.layout.part_key`:
   ``parts/<task's scope>/<id>/rank-<i>.json``);
2. participant 0 waits until all ``world`` parts exist (bounded), writes ``collected`` beside
   them, validates them, lists them once more, then writes one manifest (flagged sharded, ``s``
   in its key) whose files are the parts' files under ``rank-<i>/``, and removes the parts;
3. the others wait until that manifest is listed (bounded), so ``save()`` returns on every
   participant only once the checkpoint is committed.  One that stops waiting (a signal, a
   gone marker, the timeout) first **withdraws** its part (a :data:`WITHDRAWN` marker beside
   it; the part itself stays a GC root until participant 0 commits or refuses), so
   participant 0 refuses to commit; if ``collected`` already existed its error says the save
   may still be committed.

All participants derive the checkpoint id from the same inputs (task, attempt, name, the number
of the save, the participant kind, the world size and ``TORCHELASTIC_RESTART_COUNT``), so they
agree on it
without talking to each other.  A participant that never writes its part makes participant 0
time out naming it; nothing is committed, so a checkpoint with a missing part can never be
listed or loaded.

A participant that will not save any more (its step failed or was interrupted, its sharded save
failed) writes a **gone marker** (:func:`mark_gone`, keys in :mod:`.layout`); every wait lists
the markers of its attempt at most every :data:`GONE_POLL` seconds and stops with an error naming
who is gone and why, instead of waiting for the timeout.  A wait also stops when its ``abort``
callable returns a message (the process received SIGTERM or SIGINT).

Long module: parts, the commit, the waits and the gone markers that end them are one protocol
(a change to one is a change to the others), so they stay together past 400 lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional

from ..errors import (
    CheckpointConfigError,
    CheckpointException,
    CheckpointIncomplete,
    ManifestError,
    StorageNotFound,
)
from ..storage.base import Storage
from .commit import new_id, next_seq
from .layout import (
    GONE_KINDS,
    gone_key,
    gone_of,
    gone_prefix,
    part_key,
    parts_prefix,
    save_gone_key,
)
from .manifest import Manifest, loads, now_ms, parse_key
from .scope import Scope
from .transfer import SaveStats, digest

#: ``Manifest.source["kind"]`` of a sharded checkpoint; ``source["ranks"]`` is the number of
#: participants, ``source["by"]`` their kind (absent in checkpoints of the first ``@parallel``
#: design, whose participants were nodes).
KIND = "parallel"
#: Seconds between two listings of the gone markers during a wait.
GONE_POLL = 0.5
#: A wait's ``abort``: returns why to stop now (``"received SIGTERM"``), or None.
Abort = Callable[[], Optional[str]]
#: Name (under the save's parts, not a part: no ``.json``) of the object participant 0 writes
#: once it has every part, before it checks them once more and commits: a participant that
#: withdraws its part and then finds it knows the checkpoint may still be committed.
COLLECTED = "collected"
#: Name (beside the parts, not a part) of the marker a participant that stopped waiting writes
#: to withdraw its part.  Its part itself stays until participant 0 commits or refuses: parts
#: are garbage collection's roots for the blobs of a save in flight, so deleting one before
#: the manifest is written would let GC delete blobs that manifest may still reference.
WITHDRAWN = "withdrawn-%d"


@dataclass(frozen=True)
class Participant:
    """One participant of sharded saves: ``index`` of ``world`` of its ``kind`` (``"node"``:
    a ``@parallel`` node; ``"rank"``: a ``torchrun`` worker, ``RANK`` of ``WORLD_SIZE``), in
    the worker group's ``restart`` (``TORCHELASTIC_RESTART_COUNT``).

    Raises
    ------
    ValueError
        An unknown kind, an index outside ``0..world-1`` or a negative restart count.
    """

    kind: str = "node"
    index: int = 0
    world: int = 1
    restart: int = 0

    def __post_init__(self) -> None:
        if self.kind not in GONE_KINDS:
            raise ValueError("a participant is a node or a rank, not %r" % (self.kind,))
        for what, value, low in (("world", self.world, 1), ("restart", self.restart, 0)):
            if type(value) is not int or value < low:
                raise ValueError("a participant's %s must be a whole number >= %d" % (what, low))
        if type(self.index) is not int or not 0 <= self.index < self.world:
            raise ValueError(
                "%s %r is outside 0..%d (the group has %d)"
                % (self.kind, self.index, self.world - 1, self.world)
            )

    def __str__(self) -> str:
        return "%s %d" % (self.kind, self.index)


def gang_id(
    scope: Scope, name: str, number: int, kind: str = "node", restart: int = 0, world: int = 1
) -> str:
    """The id every participant computes for its ``number``-th sharded save of ``name`` in this
    attempt (and restart of its worker group) among ``world`` participants: a participant that
    disagrees on the world size waits for another checkpoint, and is named by the timeout
    instead of being left out of this one."""
    text = "%s|%s|%s|%d|%s|%d|%d" % (
        scope.task_prefix(),
        scope.attempt,
        name,
        number,
        kind,
        restart,
        world,
    )
    return digest(text.encode("utf-8"))[:16]


def rank_dir(rank: int) -> str:
    return "rank-%d" % rank


def write_part(storage: Storage, scope: Scope, id: str, rank: int, manifest: Manifest) -> None:
    """Store participant ``rank``'s shard description (its blobs are already stored)."""
    body = {
        "rank": rank,
        "files": [f.to_json() for f in manifest.files],
        "dirs": manifest.dirs,
        "stats": manifest.stats,
        "chunk_size": manifest.chunk_size,
    }
    storage.put_bytes(part_key(scope.task_prefix(), id, rank), json.dumps(body).encode())


def part_blobs(data: bytes, key: str) -> set[str]:
    """The blobs a stored part references (garbage collection keeps them until the
    checkpoint's manifest, which references them too, replaces the part).

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


# ------------------------------------------------------------------------------ gone markers
#: Longest reason of a gone marker shown (a marker is any object of the store: never trusted).
REASON_LIMIT = 500


class Gone(NamedTuple):
    """A participant that will take part in no more sharded save of an attempt (``save``
    None), or in one sharded save (``save``: its id).  ``saves`` (an ``exited`` rank's
    marker): how many sharded saves of each name its process made."""

    kind: str
    index: int
    reason: str
    restart: int = 0
    save: Optional[str] = None
    saves: Optional[Mapping[str, int]] = None

    def __str__(self) -> str:
        return "%s %d" % (self.kind, self.index)


def mark_gone(
    storage: Storage,
    scope: Scope,
    who: tuple[str, int],
    reason: str,
    restart: int = 0,
    *,
    save: Optional[str] = None,
    saves: Optional[Mapping[str, int]] = None,
) -> None:
    """Publish that ``who`` (``("node", n)`` or ``("rank", r)``) of the attempt ``scope`` will
    not save any more, and why (the others' waits stop on it); with ``save`` (an id), that
    only its part of that sharded save failed (the waits of that save stop, later saves go
    on).  ``saves``: the sharded saves of each name the process made (its exit marker).
    Raises what the store raises."""
    kind, index = who
    body = {
        "who": "%s %d" % (kind, index),
        "kind": kind,
        "index": index,
        "reason": str(reason)[:REASON_LIMIT],
        "restart": restart,
        "at_ms": now_ms(),
    }
    if saves is not None:
        body["saves"] = dict(saves)
    prefix, attempt = scope.task_prefix(), scope.attempt
    if save is None:
        key = gone_key(prefix, attempt, kind, index)
    else:
        key = save_gone_key(prefix, attempt, save, kind, index)
    storage.put_bytes(key, json.dumps(body).encode("utf-8"))


def gone(storage: Storage, scope: Scope, save: Optional[str] = None) -> list[Gone]:
    """Every participant marked gone in the attempt ``scope``, and those marked gone from the
    sharded save ``save`` (one listing, plus one read per marker found).  An unreadable
    marker still counts: its reason says so; a reason is cut at :data:`REASON_LIMIT`."""
    found = []
    prefix = gone_prefix(scope.task_prefix(), scope.attempt)
    for o in storage.list(prefix):
        who = gone_of(o.key)
        folder = o.key[len(prefix) :].rpartition("/")[0]
        if who is None or folder not in ("", "save-%s" % save):
            continue
        reason, restart, saves = "its marker %s is unreadable" % o.key, 0, None
        try:
            body = json.loads(storage.get_bytes(o.key))
            reason = str(body.get("reason") or "no reason given")[:REASON_LIMIT]
            restart = body.get("restart", 0) if type(body.get("restart", 0)) is int else 0
            raw = body.get("saves")
            if type(raw) is dict and all(type(v) is int for v in raw.values()):
                saves = raw
        except (CheckpointException, ValueError, AttributeError, RecursionError):
            pass
        found.append(Gone(who[0], who[1], reason, restart, save if folder else None, saves))
    return sorted(found, key=lambda g: (g.kind, g.index, g.save is None, g.reason))


class _Watch:
    """What ends a wait of sharded save ``id`` (the ``number``-th of ``name``) before its
    timeout: ``abort`` (asked every poll) and the gone markers that concern ``me`` (listed at
    most every :data:`GONE_POLL` seconds).

    Markers of this save concern everyone.  Node markers concern everyone (a node's workers
    go with it).  Rank markers concern the ranks of the same worker group restart only (a
    restarted group starts clean, and a node's own step process may outlive its workers); a
    rank's exit marker only the saves of a name it made, and fewer than this one of (an
    earlier worker process of the same rank that saved other names says nothing about
    this one)."""

    def __init__(
        self,
        storage: Storage,
        scope: Scope,
        me: Participant,
        abort: Optional[Abort],
        id: Optional[str] = None,
        name: str = "",
        number: int = 0,
    ):
        self._storage = storage
        self._scope = scope
        self._me = me
        self._abort = abort
        self._id = id
        self._name = name
        self._number = number
        self._next = 0.0

    def abort(self) -> Optional[str]:
        return self._abort() if self._abort is not None else None

    def gone(self) -> list[Gone]:
        """The markers that concern this participant (none until :data:`GONE_POLL` passed
        since the last listing)."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + GONE_POLL
        return [
            self._explained(g)
            for g in gone(self._storage, self._scope, self._id)
            if self._concerns(g)
        ]

    def _concerns(self, g: Gone) -> bool:
        me = self._me
        if g.save is not None or g.kind == "node":
            return True
        if me.kind != "rank" or g.restart != me.restart:
            return False
        return g.saves is None or g.saves.get(self._name, -1) in range(self._number + 1)

    def _explained(self, g: Gone) -> Gone:
        if g.saves is None:
            return g
        made = g.saves.get(self._name, 0)
        return g._replace(
            reason="%s after %d sharded save(s) of %r, without making this one (every %s "
            "must call save(sharded=True) the same number of times per name)"
            % (g.reason, made, self._name, g.kind)
        )


def _wait(
    check: Callable[[], Optional[object]],
    timeout: float,
    poll: float,
    describe: Callable[[], str],
    stop: Callable[[], Optional[str]],
):
    """Poll ``check`` until it returns something, backing off from 10 ms to ``poll`` seconds
    (participants usually finish within milliseconds of each other, so a fixed long sleep
    would add itself to every sharded save).  ``stop`` is asked after every unsuccessful
    check: a message ends the wait with it."""
    deadline = time.monotonic() + timeout
    delay = min(0.01, poll)
    while True:
        found = check()
        if found is not None:
            return found
        why = stop()
        if why is not None:
            raise CheckpointIncomplete(why)
        if time.monotonic() >= deadline:
            raise CheckpointIncomplete(describe())
        time.sleep(delay)
        delay = min(poll, delay * 2)


def upload_guard(name: str, scope: Scope, abort: Optional[Abort]) -> Callable[[int], None]:
    """A ``progress`` hook for the upload of this participant's part: it raises once ``abort``
    says why to stop (a signal received), so a big part's upload ends at its next chunk instead
    of running to the end before the wait notices the signal."""

    def check(nbytes: int) -> None:
        why = abort() if abort is not None else None
        if why is not None:
            raise CheckpointIncomplete(
                _not_committed(name, scope, "stopped uploading this part: %s" % why)
            )

    return check


def _not_committed(name: str, scope: Scope, why: str) -> str:
    return "Checkpoint %r of task %s was not committed: %s." % (name, scope.pathspec, why)


def _gone_reason(who: list[Gone]) -> str:
    return "%s will not save it (%s)" % (
        " and ".join(str(g) for g in who),
        "; ".join("%s: %s" % (g, g.reason) for g in who),
    )


def _gone_message(name: str, scope: Scope, who: list[Gone]) -> str:
    return _not_committed(
        name,
        scope,
        "%s; nothing was committed, the retry loads the previous checkpoint" % _gone_reason(who),
    )


def commit(
    storage: Storage,
    scope: Scope,
    id: str,
    me: Participant,
    *,
    name: str,
    metadata: dict,
    latest: bool,
    timeout: float,
    poll: float = 0.2,
    created_ms: Optional[int] = None,
    abort: Optional[Abort] = None,
    number: int = 0,
) -> Manifest:
    """Participant 0: wait for every part, then write the checkpoint's manifest (last) and
    drop the parts.

    ``created_ms`` dates it (default: now); participant 0's task clock passes its own.
    ``number`` is the number of this sharded save of ``name`` (for messages).

    Raises
    ------
    CheckpointIncomplete
        A part is missing after ``timeout`` seconds, a participant without a part is marked
        gone, or ``abort`` said to stop: naming who and why; nothing is committed.
    CheckpointConfigError
        A checkpoint with this id is already committed: the participants' counts of sharded
        saves started again (a new process per save); nothing is committed.
    """
    existing = committed_key(storage, scope, id)
    if existing is not None:
        raise CheckpointConfigError(_repeated(name, number, scope, me, existing))
    world = me.world
    prefix = parts_prefix(scope.task_prefix(), id)
    keys = {r: part_key(scope.task_prefix(), id, r) for r in range(world)}
    have: set[int] = set()
    watch = _Watch(storage, scope, me, abort, id, name, number)

    def all_parts():
        listed = {o.key for o in storage.list(prefix)}
        have.clear()
        have.update(r for r, k in keys.items() if k in listed)
        return have if len(have) >= world else None

    def missing() -> str:
        absent = [r for r in range(world) if r not in have]
        return _not_committed(
            name,
            scope,
            "%s(s) %s did not save their part within %g s (all %d %ss must call "
            "save(sharded=True) the same number of times)"
            % (me.kind, ", ".join(map(str, absent)), timeout, world, me.kind),
        )

    def stop() -> Optional[str]:
        why = watch.abort()
        if why is not None:
            waiting = ", ".join(str(r) for r in range(world) if r not in have)
            return _not_committed(
                name, scope, "stopped waiting for %s(s) %s: %s" % (me.kind, waiting, why)
            )
        # A participant whose part is stored needs nothing more: the commit can go ahead.
        who = [g for g in watch.gone() if not (g.kind == me.kind and g.index in have)]
        if not who or all_parts() is not None:  # list once more: a part may have come since
            return None
        who = [g for g in who if not (g.kind == me.kind and g.index in have)]
        return _gone_message(name, scope, who) if who else None

    _wait(all_parts, timeout, poll, missing, stop)
    # From here on a participant that withdraws its part (it stopped waiting) may find this and
    # say the checkpoint may still be committed; one that withdraws before it, is refused below.
    collected = parts_prefix(scope.task_prefix(), id) + COLLECTED
    storage.put_bytes(collected, b"{}")
    manifest = Manifest(
        id=id,
        name=name,
        scope=scope,
        latest=latest,
        created_ms=now_ms() if created_ms is None else created_ms,
        seq=next_seq(),
        metadata=metadata,
        files=[],
        dirs=[],
        source={"kind": KIND, "ranks": world, "by": me.kind},
        sharded=True,
    )
    stats = SaveStats()
    for rank in range(world):
        try:
            part = _read_part(storage, keys[rank], me.kind, rank, manifest)
        except ManifestError:
            if storage.exists(keys[rank]):
                raise
            _refuse_withdrawn(storage, prefix, _withdrawn(name, scope, me, [rank]))
        base = rank_dir(rank)
        manifest.dirs += [base] + ["%s/%s" % (base, d) for d in part.dirs]
        manifest.files += [replace(f, path="%s/%s" % (base, f.path)) for f in part.files]
        for field in ("files", "bytes_read", "bytes_uploaded", "bytes_deduplicated"):
            setattr(stats, field, getattr(stats, field) + part.stats.get(field, 0))
        manifest.chunk_size = manifest.chunk_size or part.chunk_size
    # A rank dir that holds files is implied by them; keep only empty ones.
    manifest.dirs = [
        d for d in manifest.dirs if not any(f.path.startswith(d + "/") for f in manifest.files)
    ]
    manifest.stats = stats.to_json()
    # Every part once more, right before the manifest: one withdrawn meanwhile is refused.
    listed = {o.key for o in storage.list(prefix)}
    gone_parts = [r for r, k in keys.items() if k not in listed or prefix + WITHDRAWN % r in listed]
    if gone_parts:
        _refuse_withdrawn(storage, prefix, _withdrawn(name, scope, me, gone_parts))
    storage.put_bytes(manifest.key, manifest.dumps())
    try:
        storage.delete_many([o.key for o in storage.list(prefix)])
    except Exception:  # noqa: BLE001 - leftover parts are harmless (GC ignores them)
        pass
    return manifest


def _withdrawn(name: str, scope: Scope, me: Participant, ranks: list[int]) -> str:
    return _not_committed(
        name,
        scope,
        "%s(s) %s withdrew their part (they stopped waiting for this %s: a signal, an error or "
        "their timeout; their gone marker says why)"
        % (me.kind, ", ".join(map(str, ranks)), me.kind),
    )


def _refuse_withdrawn(storage: Storage, prefix: str, message: str) -> None:
    """Participant 0 will not commit: the save's parts and markers go (no manifest will
    reference their blobs), then the refusal is raised."""
    try:
        storage.delete_many([o.key for o in storage.list(prefix)])
    except CheckpointException:  # leftovers only make a later message cautious; GC ages parts
        pass
    raise CheckpointIncomplete(message)


def withdraw(storage: Storage, scope: Scope, id: str, me: Participant, name: str, why: str) -> str:
    """A participant > 0 that stops waiting (``why``): withdraw its part (a marker beside it,
    see :data:`WITHDRAWN`), so participant 0 refuses to commit it, then look once more.
    Returns the key of the checkpoint if participant 0 committed it meanwhile (the save is
    then committed, whatever stopped the wait); otherwise raises.

    Raises
    ------
    CheckpointIncomplete
        Saying the checkpoint was not committed, or, if participant 0 had already collected
        every part (this one's too) before it was withdrawn, that it may still be committed.
    """
    prefix = parts_prefix(scope.task_prefix(), id)
    try:
        storage.put_bytes(prefix + WITHDRAWN % me.index, b"{}")
        withdrawn = True
    except CheckpointException:
        withdrawn = False
    key = committed_key(storage, scope, id)
    if key is not None:
        return key
    if withdrawn and not storage.exists(prefix + COLLECTED):
        raise CheckpointIncomplete(
            _not_committed(
                name, scope, "%s; this %s withdrew its part, so it never will be" % (why, me.kind)
            )
        )
    raise CheckpointIncomplete(
        "Checkpoint %r of task %s may still be committed by %s 0: this %s stopped waiting (%s) "
        "%s; list the task's checkpoints to know."
        % (
            name,
            scope.pathspec,
            me.kind,
            me.kind,
            why,
            "after %s 0 had collected every part, its own too" % me.kind
            if withdrawn
            else "and could not withdraw its part",
        )
    )


def committed_key(storage: Storage, scope: Scope, id: str) -> Optional[str]:
    """The key of the task's committed checkpoint with ``id``, or None (one listing)."""
    for o in storage.list(scope.task_prefix()):
        try:
            if parse_key(o.key).id == id:
                return o.key
        except ManifestError:
            continue
    return None


def _repeated(name: str, number: int, scope: Scope, me: Participant, existing: str) -> str:
    return (
        "Sharded save #%d of %r in task %s (attempt %d) was already committed, as %s: %s %d "
        "counted its sharded saves of %r from 0 again. Every participant must make its n-th "
        "sharded save of a name in the same process (the count is per process: not a new "
        "process per save, e.g. a script started for each epoch); save under a new name per "
        "process instead. Nothing was committed."
        % (number, name, scope.pathspec, scope.attempt, existing, me.kind, me.index, name)
    )


def has_part(manifest: Manifest, index: int) -> bool:
    """Whether the sharded checkpoint ``manifest`` holds a part of participant ``index`` (an
    empty part is an empty ``rank-<i>`` directory)."""
    base = rank_dir(index)
    return any(f.path.startswith(base + "/") for f in manifest.files) or any(
        d == base or d.startswith(base + "/") for d in manifest.dirs
    )


def check_part(manifest: Manifest, me: Participant, part: Manifest, number: int) -> Manifest:
    """``manifest`` if it holds exactly the part ``me`` stored (``part``) for this save.

    Raises
    ------
    CheckpointIncomplete
        It does not (participant 0 committed another save of this number: the participants'
        counts or world sizes disagree); this save is not committed.
    """

    def files(m: Manifest) -> list:
        return sorted((f.path, f.size, tuple(f.chunks)) for f in m.files)

    if has_part(manifest, me.index) and files(shard(manifest, me.index)) == files(part):
        return manifest
    raise CheckpointIncomplete(
        "Sharded save #%d of %r of task %s was not committed with this participant's part: "
        "%s 0 committed %s, made of %s's parts, without the part %s %d of %d just stored. "
        "Every participant must make its n-th sharded save of a name in the same process "
        "(not a new process per save) and agree on the number of participants (WORLD_SIZE)."
        % (
            number,
            manifest.name,
            manifest.scope.pathspec,
            me.kind,
            manifest.key,
            _parts_of(manifest),
            me.kind,
            me.index,
            me.world,
        )
    )


def _parts_of(manifest: Manifest) -> str:
    world = manifest.source.get("ranks")
    return "%d participants" % world if type(world) is int else "other participants"


def _read_part(storage: Storage, key: str, kind: str, index: int, template: Manifest) -> Manifest:
    """Participant ``index``'s part at ``key``, validated as a manifest's files are (paths,
    sizes, modes, chunks, digests, conflicts: :func:`.manifest.loads`), as ``template`` with
    the part's files.

    Raises
    ------
    ManifestError
        Unreadable or invalid: naming the key and the participant; nothing is committed.
    """
    try:
        raw = json.loads(storage.get_bytes(key))
        body = json.loads(template.dumps())
        body.update({f: raw[f] for f in ("files", "dirs", "stats", "chunk_size") if f in raw})
        if "files" not in raw:
            raise ValueError("it lists no files")
        return loads(json.dumps(body).encode("utf-8"), template.key)
    except (StorageNotFound, ValueError, TypeError, RecursionError, ManifestError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "message", None) or str(exc)
        raise ManifestError(
            "Part %s of %s %d of sharded checkpoint %r of task %s is unreadable or invalid (%s); "
            "nothing was committed."
            % (key, kind, index, template.name, template.scope.pathspec, str(why)[:300]),
            key=key,
        ) from None


def wait_committed(
    storage: Storage,
    scope: Scope,
    id: str,
    me: Participant,
    name: str,
    timeout: float,
    poll: float = 0.2,
    abort: Optional[Abort] = None,
    number: int = 0,
) -> str:
    """Participants > 0: the key of the checkpoint's manifest once participant 0 has written
    it (``number``: of this sharded save of ``name``).

    Raises
    ------
    CheckpointIncomplete
        As for :func:`commit` (a participant gone before its part was stored, participant 0
        gone, ``abort``, the timeout).
    """
    watch = _Watch(storage, scope, me, abort, id, name, number)

    def find():
        return committed_key(storage, scope, id)

    def stop() -> Optional[str]:
        why = watch.abort()
        if why is not None:
            return "stopped waiting for %s 0 to commit it: %s" % (me.kind, why)
        who = [g for g in watch.gone() if _blocks(storage, scope, id, me, g)]
        # Participant 0 may have committed meanwhile (it writes the manifest before it
        # removes the parts, and before it ends): look once more.
        return _gone_reason(who) if who and find() is None else None

    try:
        return _wait(
            find,
            timeout,
            poll,
            lambda: (
                "%s 0 did not commit it within %g s (all %d %ss must call save(sharded=True) "
                "the same number of times and agree that there are %d; this is %s %d)"
                % (me.kind, timeout, me.world, me.kind, me.world, me.kind, me.index)
            ),
            stop,
        )
    except CheckpointIncomplete as exc:
        # Participant 0 must not commit this part once this participant says it stopped.
        return withdraw(storage, scope, id, me, name, exc.message)


def _blocks(storage: Storage, scope: Scope, id: str, me: Participant, g: Gone) -> bool:
    """Whether ``g`` being gone means participant 0 can never commit: it is participant 0, a
    node whose workers are the participants, or a participant whose part is not stored."""
    if g.kind != me.kind:
        return True
    return g.index == 0 or not storage.exists(part_key(scope.task_prefix(), id, g.index))


def sharded_by(manifest: Manifest) -> str:
    """The kind of participants that wrote a sharded checkpoint (``"node"`` for checkpoints of
    the first ``@parallel`` design, which recorded none)."""
    by = manifest.source.get("by")
    return by if by in GONE_KINDS else "node"


def shard(manifest: Manifest, rank: int) -> Manifest:
    """The part of a sharded checkpoint that belongs to participant ``rank``, with paths
    relative to it."""
    base = rank_dir(rank) + "/"
    files = [
        replace(f, path=f.path[len(base) :]) for f in manifest.files if f.path.startswith(base)
    ]
    dirs = [d[len(base) :] for d in manifest.dirs if d.startswith(base)]
    return replace(manifest, files=files, dirs=dirs)


def is_gang(manifest: Manifest) -> bool:
    """Whether ``manifest`` is a sharded checkpoint (also one of the first ``@parallel``
    design, whose key is not flagged)."""
    return manifest.source.get("kind") == KIND


def save_id(scope: Scope, name: str, number: int, me: Participant) -> str:
    """The id of a sharded save: agreed by every participant of a group; random for a group
    of one, which needs no agreement (two such processes of one task must not collide)."""
    if me.world == 1:
        return new_id()
    return gang_id(scope, name, number, me.kind, me.restart, me.world)
