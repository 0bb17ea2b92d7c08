"""The manifest format: a checkpoint's commit object as types, limits, key and serialisation.

A manifest lists every file of a checkpoint (relative path, size, mode, and the slices of
content-addressed blobs that hold its bytes), the scope, name, ``latest`` flag, user metadata,
creation time, format version and save statistics.  It is written last; a checkpoint exists
exactly when its manifest does.  Its *key* (:mod:`.layout`) also encodes what listings need to
order and filter checkpoints without downloading them::

    <scope prefix><created ms>-<attempt>-<seq>-<flag>-<id>-<name>.json

``<flag>`` is ``L``/``N`` then the writer (:mod:`.position`): nothing for rank 0, ``w1.0`` for
another writer, ``s`` for a sharded checkpoint.  The body records the writer too (``position``,
``sharded``), only when it is not rank 0's plain checkpoint, so rank 0's manifests are exactly
those written before writers were recorded.

Reading a manifest back (validating every field of an untrusted body) is :mod:`.manifest`,
which also exports every name defined here.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from ..errors import (
    CheckpointConfigError,
    CheckpointMetadataError,
    CheckpointMetadataWarning,
    ManifestError,
)
from . import layout
from .layout import STORED_NAME_RE, is_blob_name
from .metadata_values import plain_json
from .position import RANK0, Position
from .scope import Scope, shared_scope, validate_name
from .tempnames import is_temp_name

FORMAT = "metaflow-checkpointing/1"
_STORED = STORED_NAME_RE.fullmatch
_FORMAT_RE = re.compile(r"metaflow-checkpointing/([0-9]{1,9})")
#: Largest accepted user metadata, in UTF-8 bytes of its JSON encoding.
MAX_METADATA_BYTES = 64 * 1024
#: Sizes, offsets and lengths are below 2**63: what every filesystem and object store API takes.
SIZE_LIMIT = 2**63
#: File modes are the 16 bits of ``st_mode`` (type and permission bits).
MAX_MODE = 0o177777
#: Creation times are at most 9999-12-31T23:59:59.999Z, the last instant ``datetime`` shows.
MAX_CREATED_MS = 253_402_300_799_999
#: Deepest nesting of JSON values in metadata, source and statistics (deeper values would come
#: near the interpreter's recursion limit when serialised again).
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class ChunkRef:
    """``length`` bytes at ``offset`` of the plain bytes of the blob stored as ``blob``: their
    BLAKE3 hash, with ``.zst`` when they are stored compressed (:mod:`.codec`)."""

    blob: str
    offset: int
    length: int

    def __post_init__(self) -> None:
        # Every chunk reference is checked where it is made (parser, gang parts, uploads): a
        # blob name becomes a storage key and, on local stores, a path that is opened.  The
        # common case is one expression; the detailed reason is worked out only on failure.
        b, o, n = self.blob, self.offset, self.length
        if not (
            type(o) is int
            and type(n) is int
            and 0 <= o < SIZE_LIMIT
            and 0 <= n < SIZE_LIMIT
            and o + n <= SIZE_LIMIT
            and type(b) is str
            and _STORED(b) is not None
        ):
            raise ManifestError(
                "Invalid chunk reference %s: %s." % (show(b), _chunk_problem(b, o, n))
            )

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
    #: The writer (:mod:`.position`); rank 0 for a sharded checkpoint.
    position: Position = RANK0
    #: Every participant of a sharded save wrote a part of it (``s`` in the key).
    sharded: bool = False

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
    #: The writer (:mod:`.position`); rank 0 for a sharded checkpoint.
    position: Position = RANK0
    #: Every participant of a sharded save wrote a part of it.
    sharded: bool = False

    @property
    def key(self) -> str:
        # Kept with the fields it was made from (a save asks for it five times, 3 us each),
        # and made again once any of them changed.
        parts = (self.scope, self.created_ms, self.seq, self.latest, self.id, self.name)
        parts += (self.position, self.sharded)
        made = self.__dict__.get("_key")
        if made is None or made[0] != parts:
            made = self.__dict__["_key"] = (parts, manifest_key(*parts))
        return made[1]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def created_on(self) -> str:
        return iso_time(self.created_ms)

    def to_json(self) -> dict:
        writer: dict[str, Any] = {}
        # Only when not rank 0's plain checkpoint: such manifests stay byte for byte what
        # releases before writers were recorded wrote (and read).
        if not self.position.is_rank0:
            writer["position"] = self.position.to_json()
        if self.sharded:
            writer["sharded"] = True
        return {
            **writer,
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


def manifest_key(
    scope: Scope,
    created_ms: int,
    seq: int,
    latest: bool,
    id: str,
    name: str,
    position: Position = RANK0,
    sharded: bool = False,
) -> str:
    """The key of a manifest (:func:`.layout.manifest_key` under the scope's task prefix)."""
    prefix = scope.task_prefix()
    return layout.manifest_key(
        prefix, created_ms, scope.attempt, seq, latest, id, name, position, sharded
    )


def parse_key(key: str) -> ManifestHeader:
    """Parse a manifest key into a header (:func:`.layout.split_manifest_key`, then the name
    and the ranges of its numbers are checked).

    Raises
    ------
    ManifestError
        If the key is not a manifest key of this format (whatever the input: never another
        exception).
    """
    k = layout.split_manifest_key(key)
    given = key if isinstance(key, str) else None  # the error's key field: strings only
    if k is None:
        raise ManifestError("%s is not a checkpoint manifest key." % show(key), key=given)
    try:
        name = validate_name(k.name)
    except CheckpointConfigError:
        raise ManifestError(
            "%s is not a checkpoint manifest key: its name is not valid." % show(key), key=given
        ) from None
    if k.created_ms > MAX_CREATED_MS or k.attempt >= SIZE_LIMIT or k.seq >= SIZE_LIMIT:
        raise ManifestError(
            "%s is not a checkpoint manifest key: its time, attempt or sequence number is out "
            "of range." % show(key),
            key=given,
        )
    scope = shared_scope(k.namespace, k.flow, k.step, k.foreach, k.run, k.task, k.attempt)
    return ManifestHeader(
        key, scope, k.created_ms, k.seq, k.latest, k.id, name, k.position, k.sharded
    )


def is_manifest_key(key: str) -> bool:
    try:
        parse_key(key)
        return True
    except ManifestError:
        return False


def validate_metadata(metadata: object) -> dict:
    """Check user metadata and return it as it will be stored (JSON round-tripped).

    ``metadata`` is a dict of JSON values (str/int/float/bool/None, lists, tuples and dicts
    whose keys are strings, or int/float/bool/None stored as JSON writes them) of at most
    :data:`MAX_METADATA_BYTES` UTF-8 bytes, nested at most :data:`MAX_JSON_DEPTH` deep (what
    :func:`loads` accepts). Metrics as users log them are accepted anywhere in it: a value with
    a callable ``.item()`` and a ``shape``/``ndim`` saying it holds one value (a torch tensor, a
    NumPy array or NumPy scalar) is stored as its ``.item()``. NaN and infinite floats (Python,
    NumPy or torch) are stored as ``null`` with one :class:`~..errors.CheckpointMetadataWarning`
    naming their key paths.

    Raises
    ------
    CheckpointMetadataError
        A value that cannot be stored, naming its key path (``metadata['opt']['lr']``), the
        reason and what to pass instead; or metadata over the size or depth limits.  A
        subclass of ``CheckpointConfigError``; raised before anything is written.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise CheckpointMetadataError(
            "Checkpoint metadata must be a dict, got %s." % type(metadata).__name__,
            reason="not a dict",
        )
    nonfinite: list[str] = []
    plain = plain_json(metadata, "metadata", MAX_JSON_DEPTH, nonfinite)
    # ensure_ascii=False: the limit counts the bytes stored, not \\uXXXX escapes (which would
    # count 6 bytes for an 'é' and 12 for an emoji).
    encoded = json.dumps(plain, sort_keys=True, allow_nan=False, ensure_ascii=False)
    size = len(encoded.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise CheckpointMetadataError(
            "Checkpoint metadata is %d bytes as JSON (UTF-8); the limit is %d. Store large data "
            "as files in the checkpoint instead." % (size, MAX_METADATA_BYTES),
            reason="too large",
        )
    if nonfinite:
        shown = ", ".join(nonfinite[:10]) + (
            " and %d more" % (len(nonfinite) - 10) if len(nonfinite) > 10 else ""
        )
        warnings.warn(
            "%s %s NaN or infinite: stored as null in the checkpoint metadata (JSON has no NaN)."
            % (shown, "is" if len(nonfinite) == 1 else "are"),
            CheckpointMetadataWarning,
            stacklevel=3,
        )
    return json.loads(encoded)


def temp_named(path: str) -> bool:
    """Whether a component of the manifest path ``path`` is named like one of the package's
    temporary files (:func:`.tempnames.is_temp_name`)."""
    return ".mfckpt-" in path and any(is_temp_name(part) for part in path.split("/"))


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
            "Manifest lists the path %s, which is not a plain relative path inside the "
            "checkpoint; refusing to load it." % show(path),
            path=path if isinstance(path, str) else None,
        )
    if temp_named(path):
        # A save never writes these; loaded, such a file would pass for a load's lock file or
        # temp file, and a load beside it would remove it (or the directory holding it).
        raise ManifestError(
            "Manifest lists the path %s, named like one of this package's temporary files; a "
            "save never writes such a path; refusing to load it." % show(path),
            path=path,
        )
    return path


# ------------------------------------------------------------------------------ shared helpers
def show(value: Any, width: int = 80) -> str:
    """A short, always printable description of any (possibly huge) JSON value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "an integer of %d bits" % value.bit_length()
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return "a %s" % type(value).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        if depth + 1 <= MAX_JSON_DEPTH:  # deeper is refused anyway: stop counting there
            stack.extend((x, depth + 1) for x in v)
    return deepest


def _chunk_problem(blob: Any, offset: Any, length: Any) -> str:
    """Why ``(blob, offset, length)`` is not a valid chunk reference, or ''."""
    if type(blob) is str and "." in blob and is_blob_name(blob.split(".", 1)[0]):
        return (
            "it is stored with codec %s, which this release cannot decode (upgrade "
            "metaflow-checkpointing to load it)" % show(blob.split(".", 1)[1], 40)
        )
    if not is_blob_name(blob):
        return "the blob name is not a 64-hex BLAKE3 digest"
    for what, v in (("offset", offset), ("length", length)):
        if type(v) is not int or not 0 <= v < SIZE_LIMIT:
            return "the %s %s is not an integer in 0..2**63-1" % (what, show(v))
    if offset + length > SIZE_LIMIT:
        return "the slice ends beyond 2**63"
    return ""


def is_newer_format(fmt: object) -> bool:
    """Whether ``fmt`` (a manifest's ``format`` field) names a later version of this format."""
    newer = _FORMAT_RE.fullmatch(fmt) if isinstance(fmt, str) else None
    return newer is not None and int(newer.group(1)) > int(FORMAT.rsplit("/", 1)[1])
