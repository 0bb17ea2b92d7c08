"""The manifest: the commit object of one checkpoint, and its key.

A manifest lists every file of a checkpoint (relative path, size, mode, and the slices of
content-addressed blobs that hold its bytes), the scope, name, ``latest`` flag, user metadata,
creation time, format version and save statistics.  It is written last; a checkpoint exists
exactly when its manifest does.

The manifest *key* also encodes what listings need to order and filter checkpoints without
downloading them::

    <scope prefix><created ms>-<attempt>-<seq>-<L|N>-<id>-<name>.json
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from ..errors import CheckpointConfigError, ManifestError
from .scope import MANIFESTS, Scope, decode, encode, validate_name

FORMAT = "metaflow-checkpointing/1"
#: Largest accepted user metadata, JSON-encoded.
MAX_METADATA_BYTES = 64 * 1024


@dataclass(frozen=True)
class ChunkRef:
    """``length`` bytes at ``offset`` of the blob whose BLAKE3 hash is ``blob``."""

    blob: str
    offset: int
    length: int

    def to_json(self) -> list:
        return [self.blob, self.offset, self.length]


@dataclass
class FileEntry:
    """One file of a checkpoint.  ``digest`` is set for files packed with others."""

    path: str
    size: int
    mode: int
    chunks: list[ChunkRef]
    digest: Optional[str] = None

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "chunks": [c.to_json() for c in self.chunks],
        }
        if self.digest:
            d["digest"] = self.digest
        return d


@dataclass(frozen=True)
class ManifestHeader:
    """What a manifest key says about its checkpoint (no download needed)."""

    key: str
    scope: Scope
    created_ms: int
    seq: int
    latest: bool
    id: str
    name: str

    @property
    def order(self) -> tuple:
        """Sort key, oldest first: time, then the per-process save sequence as tie-break (saves
        of one process in the same millisecond keep their order)."""
        return (self.created_ms, self.seq, self.scope.attempt, self.id)

    @property
    def task_order(self) -> tuple:
        """Sort key within one task: later attempts win regardless of clock skew.

        Within an attempt time decides, then the per-process sequence: ``seq`` is only ordered
        within one process, and several processes (a subprocess, a torchrun worker) may save
        for the same attempt.
        """
        return (self.scope.attempt, self.created_ms, self.seq, self.id)


@dataclass
class Manifest:
    """A whole committed (or about to be committed) checkpoint description."""

    id: str
    name: str
    scope: Scope
    latest: bool
    created_ms: int
    seq: int
    metadata: dict
    files: list[FileEntry]
    dirs: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    chunk_size: int = 0

    @property
    def key(self) -> str:
        return manifest_key(self.scope, self.created_ms, self.seq, self.latest, self.id, self.name)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def created_on(self) -> str:
        return iso_time(self.created_ms)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "id": self.id,
            "name": self.name,
            "latest": self.latest,
            "created_ms": self.created_ms,
            "created_on": self.created_on,
            "seq": self.seq,
            "scope": self.scope.to_dict(),
            "source": self.source,
            "metadata": self.metadata,
            "hash": "blake3",
            "chunk_size": self.chunk_size,
            "dirs": self.dirs,
            "files": [f.to_json() for f in self.files],
            "stats": self.stats,
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)


def manifest_key(scope: Scope, created_ms: int, seq: int, latest: bool, id: str, name: str) -> str:
    return "%s%013d-%d-%06d-%s-%s-%s.json" % (
        scope.task_prefix(),
        created_ms,
        scope.attempt,
        seq,
        "L" if latest else "N",
        id,
        name,
    )


def parse_key(key: str) -> ManifestHeader:
    """Parse a manifest key into a header.

    Raises
    ------
    ManifestError
        If the key is not a manifest key of this format.
    """
    parts = key.split("/")
    if len(parts) != 8 or parts[0] != MANIFESTS or not parts[7].endswith(".json"):
        raise ManifestError("%r is not a checkpoint manifest key." % key)
    ns, flow, step, foreach, run, task = (decode(p) for p in parts[1:7])
    fields = parts[7][: -len(".json")].split("-", 5)
    try:
        created, attempt, seq, flag, id_, name = fields
        if flag not in ("L", "N"):
            raise ValueError(flag)
        scope = Scope(ns, flow, step, foreach, run, task, int(attempt))
        return ManifestHeader(key, scope, int(created), int(seq), flag == "L", id_, name)
    except ValueError as exc:
        raise ManifestError("%r is not a checkpoint manifest key." % key) from exc


def is_manifest_key(key: str) -> bool:
    try:
        parse_key(key)
        return True
    except ManifestError:
        return False


def validate_metadata(metadata: object) -> dict:
    """Check user metadata: a JSON-serialisable dict within :data:`MAX_METADATA_BYTES`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise CheckpointConfigError(
            "Checkpoint metadata must be a dict, got %s." % type(metadata).__name__
        )
    try:
        encoded = json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointConfigError(
            "Checkpoint metadata is not JSON-serialisable (%s). Use str/int/float/bool/None, "
            "lists and dicts with string keys." % exc
        ) from exc
    if len(encoded.encode("utf-8")) > MAX_METADATA_BYTES:
        raise CheckpointConfigError(
            "Checkpoint metadata is %d bytes as JSON; the limit is %d. Store large data as "
            "files in the checkpoint instead." % (len(encoded), MAX_METADATA_BYTES)
        )
    return json.loads(encoded)


def safe_relpath(path: str) -> str:
    """Validate a manifest file path: relative, normalised, inside the checkpoint."""
    if (
        not isinstance(path, str)
        or not path
        or "\x00" in path
        or "\\" in path
        or path.startswith("/")
        or posixpath.normpath(path) != path
        or path == "."
        or path.split("/")[0] == ".."
    ):
        raise ManifestError(
            "Manifest lists the path %r, which is not a plain relative path inside the "
            "checkpoint; refusing to load it." % (path,)
        )
    return path


def _check_no_conflicts(key: str, files: list[str], dirs: list[str]) -> None:
    """Reject a file listed twice, or a file that is also a directory (listed or implied)."""
    seen: set[str] = set()
    for p in files:
        if p in seen:
            raise ManifestError("Manifest %s lists the file %r twice." % (key, p))
        seen.add(p)
    for p in files + dirs:
        parts = p.split("/")
        for i in range(1, len(parts) + (p in dirs)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise ManifestError(
                    "Manifest %s lists %r both as a file and as a directory (for %r)."
                    % (key, parent, p)
                )


def loads(data: bytes, key: str) -> Manifest:
    """Parse and validate manifest bytes read from ``key``.

    Raises
    ------
    ManifestError
        If the bytes are not a valid manifest of a known format.
    """
    try:
        d = json.loads(data.decode("utf-8"))
        if not isinstance(d, dict):
            raise TypeError("expected a JSON object, got %s" % type(d).__name__)
        if d.get("format") != FORMAT:
            raise ManifestError(
                "Manifest %s has format %r; this version of metaflow-checkpointing reads %r."
                % (key, d.get("format"), FORMAT)
            )
        files = [
            FileEntry(
                path=safe_relpath(f["path"]),
                size=int(f["size"]),
                mode=int(f["mode"]),
                chunks=[ChunkRef(str(b), int(o), int(n)) for b, o, n in f["chunks"]],
                digest=f.get("digest"),
            )
            for f in d["files"]
        ]
        for f in files:
            if sum(c.length for c in f.chunks) != f.size:
                raise ManifestError(
                    "Manifest %s: chunks of %s do not add up to its size." % (key, f.path)
                )
        dirs = [safe_relpath(p) for p in d.get("dirs", [])]
        _check_no_conflicts(key, [f.path for f in files], dirs)
        manifest = Manifest(
            id=str(d["id"]),
            name=validate_name(d["name"]),
            scope=Scope.from_dict(d["scope"]),
            latest=bool(d["latest"]),
            created_ms=int(d["created_ms"]),
            seq=int(d["seq"]),
            metadata=dict(d.get("metadata") or {}),
            files=files,
            dirs=dirs,
            source=dict(d.get("source") or {}),
            stats=dict(d.get("stats") or {}),
            chunk_size=int(d.get("chunk_size", 0)),
        )
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, CheckpointConfigError) as exc:
        raise ManifestError(
            "Manifest %s is unreadable or invalid (%s: %s). The checkpoint cannot be loaded; "
            "load another checkpoint or delete this one." % (key, type(exc).__name__, exc)
        ) from exc
    if manifest.key != key:
        raise ManifestError(
            "Manifest stored at %s describes %s; it was moved or tampered with."
            % (key, manifest.key)
        )
    return manifest


__all__ = [
    "FORMAT",
    "MAX_METADATA_BYTES",
    "ChunkRef",
    "FileEntry",
    "Manifest",
    "ManifestHeader",
    "encode",
    "is_manifest_key",
    "loads",
    "manifest_key",
    "parse_key",
    "validate_metadata",
]
