"""The report of a store check (:func:`.verify.verify`): what was found, as data, rows and prose.

Findings are plain dataclasses (:class:`DamagedEntry`, :class:`MissingBlobs`,
:class:`CorruptBlob`, :class:`InconsistentCheckpoint`, :class:`OrphanedLease`) gathered in a
:class:`VerifyReport`, which turns them into JSON, table rows and a readable summary.  Who is
to blame for what (a corrupt blob against an inconsistent checkpoint) is explained in
:mod:`.verify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..fmt import human_size
from ..storage.base import ObjectInfo
from .layout import BLOBS_PREFIX, lease_prefix
from .manifest import iso_time

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
                % (iso_time(int(lease.refreshed * 1000))[:19].replace("T", " ") + " UTC")
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
