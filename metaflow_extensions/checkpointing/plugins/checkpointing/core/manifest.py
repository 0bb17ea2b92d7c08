"""Reading a manifest back: parsing and validating an untrusted body into a :class:`Manifest`.

Manifests are read from a store anyone with write access can fill, so :func:`loads` is total:
every field is type-checked and bounded, and whatever the bytes hold the result is a manifest
or a :class:`ManifestError` naming the key and the field.  The format itself (types, limits,
keys, serialisation) is :mod:`.manifest_format`; its names are exported here too, so
``manifest.X`` is the one import for both.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from ..errors import CheckpointConfigError, ManifestError
from .codec import CODECS
from .layout import BLOB_NAME_RE, is_blob_name
from .manifest_format import (
    FORMAT,
    MAX_CREATED_MS,
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    MAX_MODE,
    SIZE_LIMIT,
    ChunkRef,
    FileEntry,
    Manifest,
    ManifestHeader,
    is_manifest_key,
    is_newer_format,
    iso_time,
    json_depth,
    manifest_key,
    now_ms,
    parse_key,
    safe_relpath,
    show,
    temp_named,
    validate_metadata,
)
from .position import RANK0, Position
from .scope import Scope, validate_name

_HEX64 = BLOB_NAME_RE.fullmatch


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


def _field(d: dict, name: str, where: str, default: Any = KeyError) -> Any:
    if name in d:
        return d[name]
    if default is KeyError:
        raise _Invalid(where + name, "is missing")
    return default


def _int(value: Any, where: str, limit: int = SIZE_LIMIT - 1, low: int = 0) -> int:
    # type() is int: a bool is an int to Python, 1.0 and "1" are not integers in a manifest.
    if type(value) is not int:
        raise _Invalid(where, "must be an integer, not %s (%s)" % (_kind(value), show(value)))
    if not low <= value <= limit:
        raise _Invalid(where, "is %s, outside %d..%d" % (show(value), low, limit))
    return value


def _str(value: Any, where: str) -> str:
    if type(value) is not str or not value:
        raise _Invalid(where, "must be a non-empty string, not %s" % show(value))
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _Invalid(where, "must be true or false, not %s" % show(value))
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
    if nested and json_depth(value) > MAX_JSON_DEPTH:
        raise _Invalid(where, "is nested more than %d levels deep" % MAX_JSON_DEPTH)
    return value


def _digest(value: Any, where: str) -> str:
    if not is_blob_name(value):
        raise _Invalid(where, "is %s, not a 64-hex BLAKE3 digest" % show(value))
    return value


def _chunk_error(value: Any, where: str) -> NoReturn:
    """Raise what is wrong with a chunk reference ``[blob, offset, length]`` that
    :class:`ChunkRef` refused."""
    items = _list(value, where)
    if len(items) != 3:
        raise _Invalid(where, "must be [blob, offset, length], not %s" % show(items))
    blob = items[0]
    if type(blob) is str and "." in blob and is_blob_name(blob.split(".", 1)[0]):
        raise _Invalid(
            where + ".blob",
            "is %s: stored with codec %s, which this release cannot decode (it knows %s); "
            "upgrade metaflow-checkpointing to load it"
            % (show(blob), show(blob.split(".", 1)[1], 40), ", ".join(sorted(CODECS))),
        )
    _digest(blob, where + ".blob")
    offset = _int(items[1], where + ".offset")
    length = _int(items[2], where + ".length")
    raise _Invalid(where, "ends beyond 2**63 (offset %d + length %d)" % (offset, length))


def _file(f: Any, i: int) -> FileEntry:
    """File ``i`` of a manifest.  Field names for messages are built only when one is wrong:
    a manifest may list 100,000 files."""

    def where(field: str = "") -> str:
        path = f.get("path") if type(f) is dict else None
        base = "files[%d]" % i + (" (%s)" % show(path, 60) if isinstance(path, str) else "")
        return base + ("." + field if field else "")

    if type(f) is not dict:
        raise _Invalid(where(), "must be an object, not %s" % _kind(f))
    path = f.get("path")
    try:
        safe_relpath(path)  # type: ignore[arg-type]
    except ManifestError:
        problem = "is missing" if "path" not in f else "is %s: " + _path_problem(path)
        raise _Invalid("files[%d].path" % i, problem.replace("%s", show(path))) from None
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
    "bytes_stored",
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
                    "must be a number of seconds, not %s" % show(v),
                )
    return stats


def _source(value: Any, where: str) -> dict:
    source = _object(value, where)
    if "kind" in source:
        _str(source["kind"], where + ".kind")
    if "ranks" in source:
        _int(source["ranks"], where + ".ranks", low=1)
    return source


def _position(value: Any, where: str) -> Position:
    """The writer a body records (absent: rank 0, as every manifest written before writers
    were recorded)."""
    if value is None:
        return RANK0
    d = _object(value, where)
    if set(d) != {"node", "local"}:
        raise _Invalid(where, 'must be {"node": n, "local": l}, not %s' % show(d))
    try:
        return Position(d["node"], d["local"])
    except ValueError as exc:
        raise _Invalid(where, "is %s: %s" % (show(d), exc)) from None


def _scope(value: Any, where: str) -> Scope:
    d = _object(value, where)
    parts = [
        _str(_field(d, n, where + "."), "%s.%s" % (where, n))
        for n in ("namespace", "flow", "step", "foreach", "run", "task")
    ]
    return Scope(*parts, attempt=_int(_field(d, "attempt", where + "."), where + ".attempt"))


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
        % (key, show(fmt), FORMAT),
        key=key,
        reason="unknown format %s" % show(fmt),
    )


def _path_problem(path: Any) -> str:
    if isinstance(path, str) and temp_named(path):
        return "named like a temporary file of this package (a save never writes one)"
    return "not a plain relative path"


def _parse(d: Any, key: str) -> Manifest:
    if type(d) is not dict:
        raise _Invalid("the body", "must be a JSON object, not %s" % _kind(d))
    _check_format(d, key)
    if d.get("hash", "blake3") != "blake3":
        raise _Invalid("hash", "is %s; only 'blake3' is known" % show(d.get("hash")))
    files = [_file(f, i) for i, f in enumerate(_list(_field(d, "files", ""), "files"))]
    dirs = []
    for i, p in enumerate(_list(d.get("dirs", []), "dirs")):
        try:
            dirs.append(safe_relpath(p))
        except ManifestError:
            raise _Invalid("dirs[%d]" % i, "is %s: %s" % (show(p), _path_problem(p))) from None
    _check_no_conflicts(key, [f.path for f in files], dirs)
    try:
        name = validate_name(_field(d, "name", ""))
    except CheckpointConfigError:
        raise _Invalid("name", "is %s: not a valid checkpoint name" % show(d["name"])) from None
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
        position=_position(d.get("position"), "position"),
        sharded=_bool(d.get("sharded", False), "sharded"),
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
    "MAX_CREATED_MS",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "MAX_MODE",
    "SIZE_LIMIT",
    "ChunkRef",
    "FileEntry",
    "Manifest",
    "ManifestHeader",
    "is_manifest_key",
    "is_newer_format",
    "iso_time",
    "loads",
    "manifest_key",
    "now_ms",
    "parse_key",
    "safe_relpath",
    "validate_metadata",
]
