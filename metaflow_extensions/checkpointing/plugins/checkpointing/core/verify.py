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
   only the blobs that some slice reaches past are read back (see below);
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import blake3

from ..errors import CheckpointNotFound, ManifestError, StorageError, StorageNotFound
from ..fmt import human_size
from ..storage.base import ObjectInfo, Storage
from . import manifest as mf
from .layout import (
    BLOBS_PREFIX,
    MANIFESTS_PREFIX,
    PARTS_PREFIX,
    blob_key,
    blob_of,
    is_part_key,
    lease_prefix,
)
from .leases import list_leases
from .scope import Scope
from .transfer import TransferOptions, _run_bounded

#: Above this many distinct referenced blobs, one listing of ``blobs/`` replaces the existence
#: checks (a listing page holds 1,000 keys on S3; existence checks are one request each).
EXISTS_LIMIT = 256

#: Unreferenced blobs listed one per row by :meth:`VerifyReport.rows` (the rest in one row).
UNREFERENCED_ROWS = 10

#: Why a manifest (or another object the check reads) is damaged.
UNRECOGNIZED_KEY = "unrecognized_key"
UNREADABLE = "unreadable"
UNPARSABLE = "unparsable"
NEWER_FORMAT = "newer_format"
KEY_MISMATCH = "key_mismatch"
INVALID = "invalid"
REASONS = (UNRECOGNIZED_KEY, UNREADABLE, UNPARSABLE, NEWER_FORMAT, KEY_MISMATCH, INVALID)

#: ``progress(phase, done, total)``: cumulative counts of one phase (``"manifests"`` and
#: ``"blobs"`` count objects, ``"bytes"`` counts bytes re-hashed), called from worker threads.
#: Phases follow each other; no call of a phase comes after the next phase started.
VerifyProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DamagedEntry:
    """An object that should be a manifest (or a gang part) but cannot be used.

    ``reason`` is one of :data:`REASONS`; ``error`` says exactly what is wrong.
    """

    key: str
    reason: str
    error: str

    def to_json(self) -> dict:
        return {"key": self.key, "reason": self.reason, "error": self.error}


@dataclass
class MissingBlobs:
    """A checkpoint some of whose blobs are not stored: ``blobs`` maps each missing hash to the
    files of the checkpoint that hold bytes in it."""

    key: str
    blobs: dict[str, list[str]]

    @property
    def files(self) -> list[str]:
        return sorted({p for paths in self.blobs.values() for p in paths})

    def to_json(self) -> dict:
        return {"key": self.key, "blobs": self.blobs, "files": self.files}


@dataclass
class CorruptBlob:
    """A stored blob whose own bytes are wrong: they do not match its BLAKE3 hash (a flipped
    byte, a truncation) or cannot be read.  Every checkpoint using it is broken, since a load
    verifies the whole blob.

    ``problems`` describe what is wrong (first the blob itself, then where the damage shows:
    slices past its end, packed files that no longer match); ``checkpoints`` maps each manifest
    key that references the blob to the files it holds bytes of.
    """

    blob: str
    key: str
    problems: list[str]
    checkpoints: dict[str, list[str]]

    def to_json(self) -> dict:
        return {
            "blob": self.blob,
            "key": self.key,
            "problems": self.problems,
            "checkpoints": self.checkpoints,
        }


@dataclass
class InconsistentCheckpoint:
    """A checkpoint whose manifest declares bytes that its blobs, intact (each matches its
    hash), do not hold: a slice past the end of a blob, or a packed file whose bytes do not match
    its recorded digest.  The defect is this manifest's: other checkpoints sharing the blobs are
    not affected.

    ``files`` maps each affected file of the checkpoint to what is wrong with it.
    """

    key: str
    files: dict[str, list[str]]

    def to_json(self) -> dict:
        return {"key": self.key, "files": self.files}


@dataclass(frozen=True)
class OrphanedLease:
    """An expired lease still stored: its writer stopped without removing it."""

    session: str
    keys: tuple[str, ...]
    refreshed: Optional[float]

    def to_json(self) -> dict:
        return {"session": self.session, "keys": list(self.keys), "refreshed": self.refreshed}


@dataclass
class VerifyReport:
    """What :func:`verify` found.  :attr:`ok` is true only when nothing is wrong.

    Attributes
    ----------
    root : str
        URL of the store.
    target : str
        What was checked (``"the whole store"``, a pathspec or a key), for messages.
    deep : bool
        Whether blob contents were re-hashed.
    whole_store : bool
        Whether orphaned leases and unreferenced blobs were looked for (only then are
        :attr:`orphaned_leases` and :attr:`unreferenced` lists rather than None).
    manifests, checkpoints_ok : int
        Manifests found, and how many of them are intact (parse, every blob stored, every slice
        within its blob and, with ``deep``, every blob and packed file matching its hash).
    files, logical_bytes : int
        Files and bytes of the checkpoints that parsed.
    blobs_referenced, bytes_hashed : int
        Distinct blobs they reference; bytes read back and hashed (``deep``, or without it the
        blobs that a slice reaches past).
    blob_check : str
        How existence was checked: ``"listing"``, ``"exists"`` (one request per blob) or
        ``"read"`` (``deep`` reads every blob).
    damaged, missing, corrupt, inconsistent : list
        :class:`DamagedEntry`, :class:`MissingBlobs`, :class:`CorruptBlob`,
        :class:`InconsistentCheckpoint`.
    orphaned_leases : list of OrphanedLease, optional
    unreferenced : list of ObjectInfo, optional
        Stored blobs nothing references (what ``gc`` reclaims, ignoring its grace period).
    seconds : float
    """

    root: str
    target: str
    deep: bool = False
    whole_store: bool = False
    manifests: int = 0
    checkpoints_ok: int = 0
    files: int = 0
    logical_bytes: int = 0
    blobs_referenced: int = 0
    bytes_hashed: int = 0
    blob_check: str = ""
    damaged: list[DamagedEntry] = field(default_factory=list)
    missing: list[MissingBlobs] = field(default_factory=list)
    corrupt: list[CorruptBlob] = field(default_factory=list)
    inconsistent: list[InconsistentCheckpoint] = field(default_factory=list)
    orphaned_leases: Optional[list[OrphanedLease]] = None
    unreferenced: Optional[list[ObjectInfo]] = None
    seconds: float = 0.0

    @property
    def unreferenced_bytes(self) -> int:
        return sum(o.size for o in self.unreferenced or ())

    @property
    def problems(self) -> int:
        """Number of findings: damaged entries, checkpoints with missing blobs, corrupt blobs,
        inconsistent checkpoints, orphaned leases, and unreferenced blobs (counted as one
        finding)."""
        return (
            len(self.damaged)
            + len(self.missing)
            + len(self.corrupt)
            + len(self.inconsistent)
            + len(self.orphaned_leases or ())
            + (1 if self.unreferenced else 0)
        )

    @property
    def ok(self) -> bool:
        """True when the check found nothing wrong (the CLI then exits with 0)."""
        return self.problems == 0

    def to_json(self) -> dict:
        """A JSON-serialisable dict of every field, plus ``ok`` and ``problems``."""
        return {
            "ok": self.ok,
            "problems": self.problems,
            "root": self.root,
            "target": self.target,
            "deep": self.deep,
            "whole_store": self.whole_store,
            "manifests": self.manifests,
            "checkpoints_ok": self.checkpoints_ok,
            "files": self.files,
            "logical_bytes": self.logical_bytes,
            "blobs_referenced": self.blobs_referenced,
            "bytes_hashed": self.bytes_hashed,
            "blob_check": self.blob_check,
            "damaged": [d.to_json() for d in self.damaged],
            "missing": [m.to_json() for m in self.missing],
            "corrupt": [c.to_json() for c in self.corrupt],
            "inconsistent": [i.to_json() for i in self.inconsistent],
            "orphaned_leases": None
            if self.orphaned_leases is None
            else [lease.to_json() for lease in self.orphaned_leases],
            "unreferenced": None
            if self.unreferenced is None
            else {
                "blobs": len(self.unreferenced),
                "bytes": self.unreferenced_bytes,
                "keys": sorted(o.key for o in self.unreferenced),
            },
            "seconds": self.seconds,
        }

    def rows(self) -> list[tuple[str, str, str]]:
        """One ``(kind, key, detail)`` per finding, for tables."""
        out = [("DAMAGED", d.key, "%s: %s" % (d.reason, d.error)) for d in self.damaged]
        for m in self.missing:
            out.append(
                (
                    "MISSING",
                    m.key,
                    "%d blob%s missing, holding %s"
                    % (len(m.blobs), "" if len(m.blobs) == 1 else "s", _few(m.files)),
                )
            )
        for c in self.corrupt:
            used = sorted(c.checkpoints)
            out.append(
                (
                    "CORRUPT",
                    c.key,
                    "%s; used by %s" % ("; ".join(c.problems), _few(used)),
                )
            )
        for i in self.inconsistent:
            found = ["%s: %s" % (p, what) for p, whats in i.files.items() for what in whats]
            more = len(found) - 3
            out.append(
                (
                    "INCONSISTENT",
                    i.key,
                    "; ".join(found[:3]) + (" and %d more" % more if more > 0 else ""),
                )
            )
        for lease in self.orphaned_leases or ():
            when = (
                "never refreshed"
                if lease.refreshed is None
                else "last refreshed %s"
                % (mf.iso_time(int(lease.refreshed * 1000))[:19].replace("T", " ") + " UTC")
            )
            out.append(("LEASE", lease_prefix(lease.session).rstrip("/"), "expired, %s" % when))
        blobs = sorted(self.unreferenced or (), key=lambda o: o.key)
        for o in blobs[:UNREFERENCED_ROWS]:
            out.append(
                ("UNREFERENCED", o.key, "%s; no checkpoint references it" % human_size(o.size))
            )
        if len(blobs) > UNREFERENCED_ROWS:
            rest = blobs[UNREFERENCED_ROWS:]
            out.append(
                (
                    "UNREFERENCED",
                    BLOBS_PREFIX,
                    "%d more blobs, %s (the JSON output lists every key)"
                    % (len(rest), human_size(sum(o.size for o in rest))),
                )
            )
        return out

    def summary(self) -> str:
        """One readable paragraph: what was checked, and the verdict."""
        how = {
            "listing": "blobs checked against one listing",
            "exists": "blobs checked one by one",
            "read": "blobs read back",
            "": "no blob to check",
        }[self.blob_check]
        head = "Checked %d checkpoint%s of %s in %s (%d files, %s; %d blobs, %s%s) in %.1f s." % (
            self.manifests,
            "" if self.manifests == 1 else "s",
            self.target,
            self.root,
            self.files,
            human_size(self.logical_bytes),
            self.blobs_referenced,
            how,
            ", %s re-hashed" % human_size(self.bytes_hashed)
            if self.deep or self.bytes_hashed
            else "",
            self.seconds,
        )
        if self.ok:
            verdict = "OK: %d intact checkpoint%s%s." % (
                self.checkpoints_ok,
                "" if self.checkpoints_ok == 1 else "s",
                ""
                if self.whole_store
                else " (leases and unreferenced data are checked only for the whole store)",
            )
        else:
            parts = [
                (len(self.damaged), "damaged entr%s" % ("y" if len(self.damaged) == 1 else "ies")),
                (len(self.missing), "checkpoint%s with missing blobs" % _s(self.missing)),
                (len(self.corrupt), "corrupt blob%s" % _s(self.corrupt)),
                (len(self.inconsistent), "inconsistent checkpoint%s" % _s(self.inconsistent)),
                (len(self.orphaned_leases or ()), "orphaned lease%s" % _s(self.orphaned_leases)),
                (len(self.unreferenced or ()), "unreferenced blob%s" % _s(self.unreferenced)),
            ]
            verdict = "PROBLEMS: %s; %d of %d checkpoints intact." % (
                ", ".join("%d %s" % (n, what) for n, what in parts if n),
                self.checkpoints_ok,
                self.manifests,
            )
            if self.unreferenced:
                verdict += (
                    "\nUnreferenced blobs (%s) are what 'checkpoint gc' reclaims once they are "
                    "older than its grace period." % human_size(self.unreferenced_bytes)
                )
        return head + "\n" + verdict


def _s(items) -> str:
    return "" if len(items or ()) == 1 else "s"


def _few(items: Sequence[str], shown: int = 3) -> str:
    more = len(items) - shown
    return ", ".join(items[:shown]) + (" and %d more" % more if more > 0 else "")


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


# ------------------------------------------------------------------------------ blob uses
@dataclass
class _Uses:
    """Every slice that checkpoints take from one blob."""

    checkpoints: dict[str, list[str]] = field(default_factory=dict)
    #: (manifest key, file path, offset, length, file digest or None)
    slices: list[tuple[str, str, int, int, Optional[str]]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return max((off + n for _k, _p, off, n, _d in self.slices), default=0)

    def add(self, key: str, entry: mf.FileEntry, chunk: mf.ChunkRef) -> None:
        paths = self.checkpoints.setdefault(key, [])
        if not paths or paths[-1] != entry.path:
            paths.append(entry.path)
        self.slices.append((key, entry.path, chunk.offset, chunk.length, entry.digest))


class _Counter:
    """Thread-safe cumulative progress of one phase."""

    def __init__(self, progress: Optional[VerifyProgress], phase: str, total: int):
        self.progress, self.phase, self.total = progress, phase, total
        self.done = 0
        self.lock = threading.Lock()
        if progress is not None:
            progress(phase, 0, total)

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            if self.progress is not None:
                self.progress(self.phase, self.done, self.total)


def _parallel(fn: Callable, items: Sequence, workers: int) -> list:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max(1, min(workers, len(items))), thread_name_prefix="mfckpt") as pool:
        return list(pool.map(fn, items))


#: (manifest key, file path, what is wrong with that file's slice): a finding of one checkpoint.
_SliceFinding = tuple[str, str, str]


def _hash_blob(
    storage: Storage, blob: str, uses: _Uses, size: Optional[int], window: int, counter: _Counter
) -> tuple[bool, list[str], list[_SliceFinding]]:
    """Read ``blob`` back in windows and check it; return (found, problems of the blob, findings
    of the slices).

    Each window is hashed into the blob's digest and into the digest of every packed file whose
    slice overlaps it, so memory stays at one window whatever the blob and file sizes.

    Who is to blame (see the module docstring): when the blob does not match its own hash (or
    cannot be read), the blob is corrupt, its problems say so and, for where the damage shows,
    the slices past its end and the packed files that no longer match; there are no slice
    findings.  When it matches, the blob is intact and its problems are empty; every slice past
    its end and every packed file not matching its digest is a finding of the manifest that
    declares it, never of the other users of the blob.
    """
    key = blob_key(blob)
    whole = blake3.blake3()  # the hash of transfer.digest, fed incrementally
    packed = [(s, blake3.blake3()) for s in uses.slices if s[4] is not None]
    pos = 0
    while True:
        try:
            data = storage.get_bytes(key, pos, window)
        except StorageNotFound:
            if pos == 0:
                return False, [], []
            return True, ["disappeared while it was read"], []
        except StorageError as exc:
            return True, ["unreadable: %s" % exc.message], []
        whole.update(data)
        end = pos + len(data)
        for (_k, _p, off, n, _d), h in packed:
            lo, hi = max(off, pos), min(off + n, end)
            if lo < hi:
                h.update(memoryview(data)[lo - pos : hi - pos])
        counter.add(len(data))
        pos = end
        if len(data) < window or (size is not None and pos >= size):
            break
    past = [(k, p, off, n) for k, p, off, n, _d in uses.slices if off + n > pos]
    unmatched = [
        (k, p, off, n) for (k, p, off, n, d), h in packed if off + n <= pos and h.hexdigest() != d
    ]
    if whole.hexdigest() != blob:
        return (
            True,
            ["content does not match its BLAKE3 hash"]
            + [
                "holds %d bytes, but %s of %s needs bytes up to %d" % (pos, p, k, off + n)
                for k, p, off, n in past[:3]
            ]
            + [
                "file %s of %s does not match its recorded hash" % (p, k)
                for k, p, _o, _n in unmatched
            ],
            [],
        )
    return (
        True,
        [],
        [
            (
                k,
                p,
                "needs bytes %d to %d of blob %s, which holds only %d bytes (and matches its hash)"
                % (off, off + n, blob, pos),
            )
            for k, p, off, n in past
        ]
        + [
            (
                k,
                p,
                "does not match its recorded hash (bytes %d to %d of blob %s, which matches its "
                "own hash)" % (off, off + n, blob),
            )
            for k, p, off, n in unmatched
        ],
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
    counter = _Counter(progress, "manifests", len(keys))

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
    uses: dict[str, _Uses] = {}
    for key, m in parsed.items():
        report.files += len(m.files)
        report.logical_bytes += m.size
        for entry in m.files:
            for chunk in entry.chunks:
                uses.setdefault(chunk.blob, _Uses()).add(key, entry, chunk)
    report.blobs_referenced = len(uses)

    # 2. Which blobs exist (and, from a listing, how big they are).
    sizes: Optional[dict[str, int]] = None
    listed: list[ObjectInfo] = []
    if whole or (uses and len(uses) > EXISTS_LIMIT):
        listed = [o for o in storage.list(BLOBS_PREFIX) if blob_of(o.key) is not None]
        sizes = {blob_of(o.key): o.size for o in listed}
        report.blob_check = "listing" if uses else ""
        present = {h for h in uses if h in sizes}
    elif deep:
        report.blob_check = "read" if uses else ""
        present = set(uses)  # reading tells
    else:
        report.blob_check = "exists" if uses else ""
        counter = _Counter(progress, "blobs", len(uses))

        def stored(h: str) -> bool:
            try:
                return storage.exists(blob_key(h))
            finally:
                counter.add()

        blobs = sorted(uses)
        present = {h for h, ok in zip(blobs, _parallel(stored, blobs, opts.workers)) if ok}
    problems: dict[str, list[str]] = {}
    findings: list[_SliceFinding] = []

    # 3. Deep: read every stored, referenced blob back.  Otherwise only the blobs that a slice
    # reaches past (by the listing): only their hash tells a truncated blob from a manifest
    # pointing past a whole one.
    if deep:
        todo = sorted(present)
    else:
        todo = sorted(h for h in present if sizes is not None and uses[h].end > sizes[h])
    if todo:
        total = sum(sizes[h] if sizes is not None else uses[h].end for h in todo)
        counter = _Counter(progress, "bytes", total)
        window = opts.chunk_size + 1  # one request for a whole chunk or pack, and no empty read
        lock = threading.Lock()

        def check(h: str) -> None:
            found, bad, slices = _hash_blob(
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
    uses: dict[str, _Uses],
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
