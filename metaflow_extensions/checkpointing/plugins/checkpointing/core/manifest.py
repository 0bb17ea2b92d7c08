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
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn, Optional

from ..errors import CheckpointConfigError, ManifestError
from . import layout
from .layout import BLOB_NAME_RE, is_blob_name
from .scope import Scope, validate_name

FORMAT = "metaflow-checkpointing/1"
_HEX64 = BLOB_NAME_RE.fullmatch
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
    """``length`` bytes at ``offset`` of the blob whose BLAKE3 hash is ``blob``."""

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
            and _HEX64(b) is not None
        ):
            raise ManifestError(
                "Invalid chunk reference %s: %s." % (_show(b), _chunk_problem(b, o, n))
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
    """The key of a manifest (:func:`.layout.manifest_key` under the scope's task prefix)."""
    prefix = scope.task_prefix()
    return layout.manifest_key(prefix, created_ms, scope.attempt, seq, latest, id, name)


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
        raise ManifestError("%s is not a checkpoint manifest key." % _show(key), key=given)
    try:
        name = validate_name(k.name)
    except CheckpointConfigError:
        raise ManifestError(
            "%s is not a checkpoint manifest key: its name is not valid." % _show(key), key=given
        ) from None
    if k.created_ms > MAX_CREATED_MS or k.attempt >= SIZE_LIMIT or k.seq >= SIZE_LIMIT:
        raise ManifestError(
            "%s is not a checkpoint manifest key: its time, attempt or sequence number is out "
            "of range." % _show(key),
            key=given,
        )
    scope = Scope(k.namespace, k.flow, k.step, k.foreach, k.run, k.task, k.attempt)
    return ManifestHeader(key, scope, k.created_ms, k.seq, k.latest, k.id, name)


def is_manifest_key(key: str) -> bool:
    try:
        parse_key(key)
        return True
    except ManifestError:
        return False


def validate_metadata(metadata: object) -> dict:
    """Check user metadata: a JSON-serialisable dict of at most :data:`MAX_METADATA_BYTES`
    UTF-8 bytes, nested at most :data:`MAX_JSON_DEPTH` deep (what :func:`loads` accepts)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise CheckpointConfigError(
            "Checkpoint metadata must be a dict, got %s." % type(metadata).__name__
        )
    try:
        # ensure_ascii=False: the limit counts the bytes stored, not \\uXXXX escapes (which
        # would count 6 bytes for an 'é' and 12 for an emoji).
        encoded = json.dumps(metadata, sort_keys=True, allow_nan=False, ensure_ascii=False)
        size = len(encoded.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise CheckpointConfigError(
            "Checkpoint metadata is not JSON-serialisable (%s). Use str/int/float/bool/None, "
            "lists and dicts with string keys." % exc
        ) from exc
    if size > MAX_METADATA_BYTES:
        raise CheckpointConfigError(
            "Checkpoint metadata is %d bytes as JSON (UTF-8); the limit is %d. Store large data "
            "as files in the checkpoint instead." % (size, MAX_METADATA_BYTES)
        )
    if _json_depth(metadata) > MAX_JSON_DEPTH:
        raise CheckpointConfigError(
            "Checkpoint metadata is nested more than %d levels deep (dicts and lists within "
            "each other); flatten it." % MAX_JSON_DEPTH
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
            "Manifest lists the path %s, which is not a plain relative path inside the "
            "checkpoint; refusing to load it." % _show(path),
            path=path if isinstance(path, str) else None,
        )
    return path


def _check_no_conflicts(key: str, files: list[str], dirs: list[str]) -> None:
    """Reject a file listed twice, or a file that is also a directory (listed or implied)."""
    seen: set[str] = set()
    for p in files:
        if p in seen:
            raise ManifestError("Manifest %s lists the file %r twice." % (key, p), key=key, path=p)
        seen.add(p)
    for p in files + dirs:
        parts = p.split("/")
        for i in range(1, len(parts) + (p in dirs)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise ManifestError(
                    "Manifest %s lists %r both as a file and as a directory (for %r)."
                    % (key, parent, p),
                    key=key,
                    path=parent,
                )


# ------------------------------------------------------------------------------ parsing
class _Invalid(Exception):
    """One field of a manifest body is invalid; ``where`` names it (``files[2].size``)."""

    def __init__(self, where: str, problem: str):
        super().__init__("%s %s" % (where, problem))


#: What a hostile or damaged body can make the parser raise; all become a ManifestError.
_PARSE_ERRORS = (
    _Invalid,
    ValueError,  # bad JSON, non-UTF-8 (UnicodeError), too many digits, unencodable scope
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,  # deep nesting
    OverflowError,
    BufferError,
    OSError,
    CheckpointConfigError,  # an invalid name
)


def _show(value: Any, width: int = 80) -> str:
    """A short, always printable description of any (possibly huge) JSON value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "an integer of %d bits" % value.bit_length()
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return "a %s" % type(value).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number with a fraction",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _json_depth(value: Any) -> int:
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


def _field(d: dict, name: str, where: str, default: Any = KeyError) -> Any:
    if name in d:
        return d[name]
    if default is KeyError:
        raise _Invalid(where + name, "is missing")
    return default


def _int(value: Any, where: str, limit: int = SIZE_LIMIT - 1, low: int = 0) -> int:
    # type() is int: a bool is an int to Python, 1.0 and "1" are not integers in a manifest.
    if type(value) is not int:
        raise _Invalid(where, "must be an integer, not %s (%s)" % (_kind(value), _show(value)))
    if not low <= value <= limit:
        raise _Invalid(where, "is %s, outside %d..%d" % (_show(value), low, limit))
    return value


def _str(value: Any, where: str) -> str:
    if type(value) is not str or not value:
        raise _Invalid(where, "must be a non-empty string, not %s" % _show(value))
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _Invalid(where, "must be true or false, not %s" % _show(value))
    return value


def _list(value: Any, where: str) -> list:
    if type(value) is not list:
        raise _Invalid(where, "must be a list, not %s" % _kind(value))
    return value


def _object(value: Any, where: str, nested: bool = True) -> dict:
    """``value`` if it is a JSON object (nested at most MAX_JSON_DEPTH when ``nested``: free-form
    values that are serialised again)."""
    if type(value) is not dict:
        raise _Invalid(where, "must be an object, not %s" % _kind(value))
    if nested and _json_depth(value) > MAX_JSON_DEPTH:
        raise _Invalid(where, "is nested more than %d levels deep" % MAX_JSON_DEPTH)
    return value


def _digest(value: Any, where: str) -> str:
    if not is_blob_name(value):
        raise _Invalid(where, "is %s, not a 64-hex BLAKE3 digest" % _show(value))
    return value


def _chunk_problem(blob: Any, offset: Any, length: Any) -> str:
    """Why ``(blob, offset, length)`` is not a valid chunk reference, or ''."""
    if not is_blob_name(blob):
        return "the blob name is not a 64-hex BLAKE3 digest"
    for what, v in (("offset", offset), ("length", length)):
        if type(v) is not int or not 0 <= v < SIZE_LIMIT:
            return "the %s %s is not an integer in 0..2**63-1" % (what, _show(v))
    if offset + length > SIZE_LIMIT:
        return "the slice ends beyond 2**63"
    return ""


def _chunk_error(value: Any, where: str) -> NoReturn:
    """Raise what is wrong with a chunk reference ``[blob, offset, length]`` that
    :class:`ChunkRef` refused."""
    items = _list(value, where)
    if len(items) != 3:
        raise _Invalid(where, "must be [blob, offset, length], not %s" % _show(items))
    _digest(items[0], where + ".blob")
    offset = _int(items[1], where + ".offset")
    length = _int(items[2], where + ".length")
    raise _Invalid(where, "ends beyond 2**63 (offset %d + length %d)" % (offset, length))


def _file(f: Any, i: int) -> FileEntry:
    """File ``i`` of a manifest.  Field names for messages are built only when one is wrong:
    a manifest may list 100,000 files."""

    def where(field: str = "") -> str:
        path = f.get("path") if type(f) is dict else None
        base = "files[%d]" % i + (" (%s)" % _show(path, 60) if isinstance(path, str) else "")
        return base + ("." + field if field else "")

    if type(f) is not dict:
        raise _Invalid(where(), "must be an object, not %s" % _kind(f))
    path = f.get("path")
    try:
        safe_relpath(path)  # type: ignore[arg-type]
    except ManifestError:
        problem = "is missing" if "path" not in f else "is %s: not a plain relative path"
        raise _Invalid("files[%d].path" % i, problem.replace("%s", _show(path))) from None
    size = f.get("size")
    if not (type(size) is int and 0 <= size < SIZE_LIMIT):
        _int(_field(f, "size", where() + "."), where("size"))
    mode = f.get("mode")
    if not (type(mode) is int and 0 <= mode <= MAX_MODE):
        _int(_field(f, "mode", where() + "."), where("mode"), MAX_MODE)
    raw = f.get("chunks")
    if type(raw) is not list:
        _list(_field(f, "chunks", where() + "."), where("chunks"))
    chunks = []
    for n, c in enumerate(raw):
        if type(c) is list and len(c) == 3:
            try:
                chunks.append(ChunkRef(*c))  # validates
                continue
            except ManifestError:
                pass
        _chunk_error(c, "%s[%d]" % (where("chunks"), n))
    total = 0
    for c in chunks:
        total += c.length
    if total != size:
        if size and not chunks:
            raise _Invalid(where("chunks"), "is empty but the file has %d bytes" % size)
        raise _Invalid(
            where("chunks"), "add up to %d bytes, not the file's size %d" % (total, size)
        )
    digest = f.get("digest")
    if digest is not None and not (type(digest) is str and _HEX64(digest) is not None):
        _digest(digest, where("digest"))
    return FileEntry(path=path, size=size, mode=mode, chunks=chunks, digest=digest)


#: Save statistics that are counts (the rest is free-form: ``seconds`` per phase, flags).
_STAT_COUNTS = (
    "files",
    "bytes_read",
    "bytes_uploaded",
    "bytes_deduplicated",
    "blobs_uploaded",
    "blobs_deduplicated",
)


def _stats(value: Any, where: str) -> dict:
    stats = _object(value, where)
    for name in _STAT_COUNTS:
        if name in stats:
            _int(stats[name], "%s.%s" % (where, name))
    seconds = stats.get("seconds")
    if seconds is not None:
        for phase, v in _object(seconds, where + ".seconds").items():
            if type(v) not in (int, float) or v < 0:
                raise _Invalid(
                    "%s.seconds.%s" % (where, phase),
                    "must be a number of seconds, not %s" % _show(v),
                )
    return stats


def _source(value: Any, where: str) -> dict:
    source = _object(value, where)
    if "kind" in source:
        _str(source["kind"], where + ".kind")
    if "ranks" in source:
        _int(source["ranks"], where + ".ranks", low=1)
    return source


def _scope(value: Any, where: str) -> Scope:
    d = _object(value, where)
    parts = [
        _str(_field(d, n, where + "."), "%s.%s" % (where, n))
        for n in ("namespace", "flow", "step", "foreach", "run", "task")
    ]
    return Scope(*parts, attempt=_int(_field(d, "attempt", where + "."), where + ".attempt"))


def is_newer_format(fmt: object) -> bool:
    """Whether ``fmt`` (a manifest's ``format`` field) names a later version of this format."""
    newer = _FORMAT_RE.fullmatch(fmt) if isinstance(fmt, str) else None
    return newer is not None and int(newer.group(1)) > int(FORMAT.rsplit("/", 1)[1])


def _check_format(d: dict, key: str) -> None:
    fmt = d.get("format")
    if fmt == FORMAT:
        return
    if is_newer_format(fmt):
        raise ManifestError(
            "Checkpoint %s was written by a newer release of metaflow-checkpointing (manifest "
            "format %r; this release reads %r). Upgrade metaflow-checkpointing (pip install -U "
            "metaflow-checkpointing) to load it." % (key, fmt, FORMAT),
            key=key,
            reason="newer format %r" % fmt,
        )
    raise ManifestError(
        "Manifest %s has format %s; this version of metaflow-checkpointing reads %r. It is not "
        "a checkpoint this release can read; load another checkpoint or delete this one."
        % (key, _show(fmt), FORMAT),
        key=key,
        reason="unknown format %s" % _show(fmt),
    )


def _parse(d: Any, key: str) -> Manifest:
    if type(d) is not dict:
        raise _Invalid("the body", "must be a JSON object, not %s" % _kind(d))
    _check_format(d, key)
    if d.get("hash", "blake3") != "blake3":
        raise _Invalid("hash", "is %s; only 'blake3' is known" % _show(d.get("hash")))
    files = [_file(f, i) for i, f in enumerate(_list(_field(d, "files", ""), "files"))]
    dirs = []
    for i, p in enumerate(_list(d.get("dirs", []), "dirs")):
        try:
            dirs.append(safe_relpath(p))
        except ManifestError:
            raise _Invalid("dirs[%d]" % i, "is %s: not a plain relative path" % _show(p)) from None
    _check_no_conflicts(key, [f.path for f in files], dirs)
    try:
        name = validate_name(_field(d, "name", ""))
    except CheckpointConfigError:
        raise _Invalid("name", "is %s: not a valid checkpoint name" % _show(d["name"])) from None
    return Manifest(
        id=_str(_field(d, "id", ""), "id"),
        name=name,
        scope=_scope(_field(d, "scope", ""), "scope"),
        latest=_bool(_field(d, "latest", ""), "latest"),
        created_ms=_int(_field(d, "created_ms", ""), "created_ms", MAX_CREATED_MS),
        seq=_int(_field(d, "seq", ""), "seq"),
        metadata=dict(_object(d.get("metadata") or {}, "metadata")),
        files=files,
        dirs=dirs,
        source=dict(_source(d.get("source") or {}, "source")),
        stats=dict(_stats(d.get("stats") or {}, "stats")),
        chunk_size=_int(d.get("chunk_size", 0), "chunk_size"),
    )


def loads(data: bytes, key: str) -> Manifest:
    """Parse and validate manifest bytes read from ``key``.

    Every field is type-checked (``true`` is not an integer, ``1.0`` is not a size), sizes,
    offsets and lengths are integers in ``0..2**63-1``, modes in ``0..0o177777``, blob names
    and digests 64-hex BLAKE3 digests; nothing in a manifest reaches storage or the
    filesystem before it passed.

    Raises
    ------
    ManifestError
        If the bytes are not a valid manifest of a known format, whatever they hold (never
        another exception); the message names the key and the field.  A manifest of a newer
        format says so: upgrade to read it.
    """
    try:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _Invalid("the body", "must be bytes, not %s" % type(data).__name__)
        text = bytes(data).decode("utf-8")
        # NaN and Infinity parse (as Python's json writes them): free-form metadata may hold
        # them; every typed field refuses anything but an integer of its range.
        body = json.loads(text)
        manifest = _parse(body, key)
        described = manifest.key
    except ManifestError as exc:
        if exc.key is None:  # e.g. a chunk reference refused where it was built
            exc.key = key
        raise
    except _PARSE_ERRORS as exc:
        problem = str(exc) if isinstance(exc, _Invalid) else "%s: %s" % (type(exc).__name__, exc)
        problem = problem if len(problem) <= 300 else problem[:297] + "..."
        raise ManifestError(
            "Manifest %s is unreadable or invalid: %s. The checkpoint cannot be loaded; load "
            "another checkpoint, or delete this one (`metaflow checkpoint delete %s`)."
            % (key, problem, key),
            key=key,
            reason=problem,
        ) from None
    if described != key:
        raise ManifestError(
            "Manifest stored at %s describes %s; it was moved or tampered with." % (key, described),
            key=key,
            reason="describes %s" % described,
        )
    return manifest


__all__ = [
    "FORMAT",
    "MAX_METADATA_BYTES",
    "SIZE_LIMIT",
    "ChunkRef",
    "FileEntry",
    "Manifest",
    "ManifestHeader",
    "is_manifest_key",
    "loads",
    "manifest_key",
    "parse_key",
    "validate_metadata",
]
