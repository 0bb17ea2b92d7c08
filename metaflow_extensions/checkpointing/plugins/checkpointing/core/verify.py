"""Verify a checkpoint store: every manifest parses and every byte it references is stored.

Read-only: nothing here writes or deletes an object.  Given a store and either explicit manifest
keys (a flow, run, step, task or one checkpoint, resolved by the client) or the whole root:

1. read every manifest (in parallel); one that cannot be read, parsed or validated is a
   *damaged* entry with a reason (:data:`REASONS`), and the rest are still checked;
2. check that every blob a checkpoint references exists: one listing of ``blobs/`` when many
   blobs are referenced (or the whole root is checked), else one existence check per blob
   (:data:`EXISTS_LIMIT`).  A listing also gives sizes, so a slice reaching past the end of its
   blob is found even without ``deep``;
3. with ``deep``, read every referenced blob back (streamed in windows of one chunk, at most
   ``options.inflight`` windows in memory, on ``options.workers`` threads), re-hash it with
   BLAKE3 and check each packed file's own digest and every slice's bounds.  Without ``deep``,
   only the blobs that some slice reaches past are read back (see below), and each compressed
   blob's first bytes are read (:func:`.verify_blobs.compressed_looks_whole`);
4. for the whole root only: expired leases still present (*orphaned*: their writer died without
   cleaning up) and *unreferenced* blobs (no manifest, ``@parallel`` part or live lease needs
   them: what ``gc`` reclaims, ignoring its grace period).

Who is to blame.  Blobs are content-addressed and shared between checkpoints, and a load
verifies a whole blob against its hash before using any of its bytes, so:

* a blob is *corrupt* (:class:`CorruptBlob`, and every checkpoint using it is broken) only when
  its own bytes are wrong: it does not match its BLAKE3 hash, or it cannot be read.  A
  truncated blob is one such case: it is shorter than a correct manifest needs, and it no
  longer matches its hash;
* a blob that matches its hash holds exactly the bytes it was saved with, whole.  A slice past
  its end, or a packed file whose bytes in it do not match the file's recorded digest, is then a
  defect of the manifest that declares that slice: an :class:`InconsistentCheckpoint` naming
  that checkpoint and file only.  The other checkpoints sharing the blob are intact.

A blob's listed size alone cannot tell the two apart (a truncated blob and a manifest pointing
past a whole blob look the same), so a blob that some slice reaches past is read back and
re-hashed even without ``deep``: one blob, and only when there is something to report.

A finding that a concurrent ``delete``/``prune`` explains (the manifest is gone by the time its
missing blob is reported) is dropped rather than reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Optional

from ..errors import CheckpointNotFound, ManifestError, StorageError, StorageNotFound
from ..storage.base import ObjectInfo, Storage
from . import manifest as mf
from .layout import (
    BLOBS_PREFIX,
    MANIFESTS_PREFIX,
    PARTS_PREFIX,
    blob_key,
    blob_of,
    is_part_key,
)
from .leases import list_leases
from .scope import Scope
from .transfer import TransferOptions, _run_bounded
from .verify_blobs import Counter, SliceFinding, Uses, VerifyProgress, hash_blob
from .verify_blobs import compressed_looks_whole as looks_whole
from .verify_blobs import parallel as _parallel
from .verify_report import (
    INVALID,
    KEY_MISMATCH,
    NEWER_FORMAT,
    REASONS,
    UNPARSABLE,
    UNREADABLE,
    UNRECOGNIZED_KEY,
    CorruptBlob,
    DamagedEntry,
    InconsistentCheckpoint,
    MissingBlobs,
    OrphanedLease,
    VerifyReport,
)

#: Above this many distinct referenced blobs, one listing of ``blobs/`` replaces the existence
#: checks (a listing page holds 1,000 keys on S3; existence checks are one request each).
EXISTS_LIMIT = 256


# ------------------------------------------------------------------------------ manifests
def _reason(data: bytes, key: str) -> str:
    """Classify a manifest that :func:`manifest.loads` refused."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return UNPARSABLE
    if not isinstance(body, dict):
        return UNPARSABLE
    fmt = body.get("format")
    if fmt != mf.FORMAT:
        return NEWER_FORMAT if mf.is_newer_format(fmt) else INVALID
    try:
        described = mf.manifest_key(
            Scope.from_dict(body["scope"]),
            int(body["created_ms"]),
            int(body["seq"]),
            bool(body["latest"]),
            str(body["id"]),
            str(body["name"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return INVALID
    return KEY_MISMATCH if described != key else INVALID


def _parse(storage: Storage, key: str) -> tuple[Optional[mf.Manifest], Optional[DamagedEntry]]:
    """The manifest at ``key``, or why it is damaged; (None, None) if it is gone."""
    try:
        mf.parse_key(key)
    except ManifestError as exc:
        return None, DamagedEntry(key, UNRECOGNIZED_KEY, exc.message)
    try:
        data = storage.get_bytes(key)
    except StorageNotFound:
        return None, None  # deleted since it was listed: nothing to check
    except StorageError as exc:
        return None, DamagedEntry(key, UNREADABLE, exc.message)
    try:
        manifest = mf.loads(data, key)
    except ManifestError as exc:
        return None, DamagedEntry(key, _reason(data, key), exc.message)
    except Exception as exc:  # a hostile body must be a finding, never a crash of the check
        return None, DamagedEntry(key, _reason(data, key), "%s: %s" % (type(exc).__name__, exc))
    # loads() already refused blob names that are not hashes and negative sizes or offsets.
    return manifest, None


def _part_blobs(storage: Storage, key: str) -> tuple[set[str], Optional[DamagedEntry]]:
    """Blobs a ``@parallel`` part references (they are live until the gang commits)."""
    try:
        body = json.loads(storage.get_bytes(key).decode("utf-8"))
        return {str(c[0]) for f in body["files"] for c in f["chunks"]}, None
    except StorageNotFound:
        return set(), None
    except StorageError as exc:
        return set(), DamagedEntry(key, UNREADABLE, exc.message)
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError, IndexError) as exc:
        return set(), DamagedEntry(
            key,
            UNPARSABLE,
            "@parallel part %s is unreadable (%s: %s); garbage collection cannot know its blobs."
            % (key, type(exc).__name__, exc),
        )


# ------------------------------------------------------------------------------ verify
def verify(
    storage: Storage,
    keys: Optional[Sequence[str]] = None,
    *,
    target: Optional[str] = None,
    deep: bool = False,
    options: Optional[TransferOptions] = None,
    lease_ttl: Optional[float] = None,
    progress: Optional[VerifyProgress] = None,
    now: Optional[float] = None,
) -> VerifyReport:
    """Check the checkpoints of ``keys`` (manifest keys), or of the whole store when None.

    Parameters
    ----------
    storage : Storage
        The store, rooted at the checkpoint root.
    keys : sequence of str, optional
        Manifest keys to check (a flow, run, step, task or one checkpoint, as the client
        resolved them).  None checks the whole store, including orphaned leases and
        unreferenced blobs.
    target : str, optional
        How to name what is checked in the report.
    deep : bool
        Also read every referenced blob back and check its hash, each packed file's digest and
        each slice's bounds.  Without it, only a blob that some slice reaches past (by the
        listing's size) is read back, to tell a truncated blob from a manifest pointing past a
        whole one.
    options : TransferOptions, optional
        ``workers`` threads, at most ``inflight`` windows of ``chunk_size`` bytes in memory.
    lease_ttl : float, optional
        Lease lifetime in seconds (default: the writers' setting).
    progress : callable, optional
        ``progress(phase, done, total)``, see :data:`VerifyProgress`.
    now : float, optional
        Current time, for judging leases (tests).

    Returns
    -------
    VerifyReport
        Never raises for a damaged entry, a missing or corrupt blob or an inconsistent
        checkpoint: those are findings.

    Raises
    ------
    StorageError
        A listing failed (listings fail closed: an unreadable prefix is never taken as empty).
    """
    started = time.perf_counter()
    opts = options or TransferOptions()
    whole = keys is None
    report = VerifyReport(
        storage.url, target or ("the whole store" if whole else "%d keys" % len(keys)), deep, whole
    )
    if whole:
        keys = sorted({o.key for o in storage.list(MANIFESTS_PREFIX) if not o.key.endswith("/")})
    keys = sorted(set(keys))

    # 1. Read and parse every manifest.
    counter = Counter(progress, "manifests", len(keys))

    def read(key: str):
        try:
            return _parse(storage, key)
        finally:
            counter.add()

    parsed: dict[str, mf.Manifest] = {}
    for key, (manifest, damaged) in zip(keys, _parallel(read, keys, opts.workers)):
        if damaged is not None:
            report.damaged.append(damaged)
        if manifest is not None:
            parsed[key] = manifest
    report.manifests = len(parsed) + sum(1 for d in report.damaged if d.reason != UNRECOGNIZED_KEY)
    uses: dict[str, Uses] = {}
    for key, m in parsed.items():
        report.files += len(m.files)
        report.logical_bytes += m.size
        for entry in m.files:
            for chunk in entry.chunks:
                uses.setdefault(chunk.blob, Uses()).add(key, entry, chunk)
    report.blobs_referenced = len(uses)

    # 2. Which blobs exist (and, from a listing, how big they are).
    sizes: Optional[dict[str, int]] = None
    listed: list[ObjectInfo] = []
    heads: list[str] = []  # compressed blobs a shallow check reads the header of (below)
    ticks = Counter(None, "blobs", 0)  # progress of the exists() check only
    if whole or (uses and len(uses) > EXISTS_LIMIT):
        listed = [o for o in storage.list(BLOBS_PREFIX) if blob_of(o.key) is not None]
        sizes = {blob_of(o.key): o.size for o in listed}
        report.blob_check = "listing" if uses else ""
        present = {h for h in uses if h in sizes}
        heads = [] if deep else sorted(h for h in present if "." in h)
    elif deep:
        report.blob_check = "read" if uses else ""
        present = set(uses)  # reading tells
    else:
        report.blob_check = "exists" if uses else ""
        ticks = Counter(progress, "blobs", len(uses))
        # A compressed blob's header read also says whether it exists: no exists() for it.
        heads = sorted(h for h in uses if "." in h)
        plain = sorted(h for h in uses if "." not in h)

        def stored(h: str) -> bool:
            try:
                return storage.exists(blob_key(h))
            finally:
                ticks.add()

        present = {h for h, ok in zip(plain, _parallel(stored, plain, opts.workers)) if ok}
        present |= set(heads)  # settled by the header pass

    # Shallow, compressed: one header read each (None: missing, False: suspect, read back).
    def header(h: str) -> Optional[bool]:
        try:
            return looks_whole(storage, h, uses[h].end, None if sizes is None else sizes[h])
        finally:
            ticks.add()

    looks = dict(zip(heads, _parallel(header, heads, opts.workers)))
    present -= {h for h, ok in looks.items() if ok is None}
    suspect = {h for h, ok in looks.items() if ok is False}
    problems: dict[str, list[str]] = {}
    findings: list[SliceFinding] = []

    # 3. Deep: read every stored, referenced blob back.  Otherwise only the blobs that a slice
    # reaches past (by the listing): only their hash tells a truncated blob from a manifest
    # pointing past a whole one.
    if deep:
        todo = sorted(present)
    else:
        # (A compressed blob's listed size says little about its plain length: its header does.)
        todo = sorted(
            suspect
            | {h for h in present if sizes is not None and "." not in h and uses[h].end > sizes[h]}
        )
    if todo:
        total = sum(sizes[h] if sizes is not None else uses[h].end for h in todo)
        counter = Counter(progress, "bytes", total)
        window = opts.chunk_size + 1  # one request for a whole chunk or pack, and no empty read
        lock = threading.Lock()

        def check(h: str) -> None:
            found, bad, slices = hash_blob(
                storage, h, uses[h], None if sizes is None else sizes[h], window, counter
            )
            with lock:
                if not found:
                    present.discard(h)
                elif bad:
                    problems[h] = bad
                findings.extend(slices)

        _run_bounded((lambda h=h: check(h) for h in todo), opts.workers, opts.inflight)
        report.bytes_hashed = counter.done

    # 4. Findings per checkpoint; drop those a concurrent delete explains.
    missing: dict[str, dict[str, list[str]]] = {}
    for h in sorted(set(uses) - present):
        for key, paths in uses[h].checkpoints.items():
            missing.setdefault(key, {})[h] = paths
    if missing:
        gone = [
            k
            for k, alive in zip(missing, _parallel(storage.exists, list(missing), opts.workers))
            if not alive
        ]
        for k in gone:
            del missing[k]
    report.missing = [MissingBlobs(k, missing[k]) for k in sorted(missing)]
    report.corrupt = [
        CorruptBlob(h, blob_key(h), problems[h], uses[h].checkpoints) for h in sorted(problems)
    ]
    # A slice finding is the declaring manifest's alone (its blob matched its hash).
    inconsistent: dict[str, dict[str, list[str]]] = {}
    for k, p, what in sorted(findings):
        inconsistent.setdefault(k, {}).setdefault(p, []).append(what)
    report.inconsistent = [InconsistentCheckpoint(k, inconsistent[k]) for k in sorted(inconsistent)]
    broken = set(missing) | {k for h in problems for k in uses[h].checkpoints} | set(inconsistent)
    report.checkpoints_ok = len([k for k in parsed if k not in broken])
    report.damaged.sort(key=lambda d: d.key)

    # 5. The whole store: orphaned leases and unreferenced blobs.
    if whole:
        _unreferenced(storage, report, keys, uses, listed, lease_ttl, now, opts.workers)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _unreferenced(
    storage: Storage,
    report: VerifyReport,
    keys: Sequence[str],
    uses: dict[str, Uses],
    listed: list[ObjectInfo],
    lease_ttl: Optional[float],
    now: Optional[float],
    workers: int,
) -> None:
    """Fill ``report.orphaned_leases`` and ``report.unreferenced`` (GC's notion of live, without
    the grace period)."""
    live = set(uses)
    # Checkpoints committed since the first listing reference blobs too (saves in flight).
    seen = set(keys)
    later = sorted(
        o.key
        for o in storage.list(MANIFESTS_PREFIX)
        if mf.is_manifest_key(o.key) and o.key not in seen
    )
    for m, _damaged in _parallel(lambda k: _parse(storage, k), later, workers):
        if m is not None:
            live |= {c.blob for f in m.files for c in f.chunks}
    parts = sorted(o.key for o in storage.list(PARTS_PREFIX) if is_part_key(o.key))
    for blobs, damaged in _parallel(lambda k: _part_blobs(storage, k), parts, workers):
        live |= blobs
        if damaged is not None:
            report.damaged.append(damaged)
    leases = list_leases(storage, lease_ttl, now, read_names="live", workers=workers)
    for lease in leases:
        # An unreadable names-* object stops GC (it cannot know what the lease protects).
        report.damaged += [
            DamagedEntry(key, UNPARSABLE, "Lease object %s is unreadable." % key)
            for key in lease.unreadable
        ]
    report.damaged.sort(key=lambda d: d.key)
    report.orphaned_leases = [
        OrphanedLease(lease.session, lease.keys, lease.refreshed)
        for lease in leases
        if lease.expired
    ]
    live_leases = [lease for lease in leases if not lease.expired]
    report.unreferenced = [
        o
        for o in listed
        if blob_of(o.key) not in live
        and not any(lease.protects(blob_of(o.key), o.mtime) for lease in live_leases)
    ]


def single(storage: Storage, key: str) -> list[str]:
    """``[key]`` if a manifest is stored at ``key``.

    Raises
    ------
    CheckpointNotFound
        Nothing is stored at ``key``.
    """
    if not storage.exists(key):
        raise CheckpointNotFound(
            "No checkpoint with key %s in %s (deleted, never committed, or another store)."
            % (key, storage.url)
        )
    return [key]


__all__ = [
    "EXISTS_LIMIT",
    "REASONS",
    "CorruptBlob",
    "DamagedEntry",
    "InconsistentCheckpoint",
    "MissingBlobs",
    "OrphanedLease",
    "VerifyReport",
    "verify",
]
