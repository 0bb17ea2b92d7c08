"""The manifest parser against hostile input: a Manifest or a ManifestError, nothing else.

Manifests are read from a store that anyone with write access can fill, and a damaged or
crafted one must never crash a listing, hang a load or reach a file outside the store.
Property tests (hypothesis) feed :func:`manifest.loads` arbitrary JSON, random bytes and
mutations of valid manifests (every field replaced by arbitrary JSON or extreme numbers, deep
nesting), and :func:`manifest.parse_key` arbitrary strings; generated valid manifests round-trip
exactly.  Example tests pin the error message of each class of defect to the field it names.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import manifest as mf
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    FORMAT,
    MAX_CREATED_MS,
    MAX_MODE,
    ChunkRef,
    FileEntry,
    Manifest,
    ManifestHeader,
    iso_time,
    loads,
    parse_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.position import RANK0, Position
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    ManifestError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope

#: The fields of a manifest its key is made of.
KEY_FIELDS = ("scope", "created_ms", "seq", "latest", "id", "name", "position", "sharded")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEX = "0123456789abcdef"
BLOB = "ab" * 32


# ------------------------------------------------------------------------------ strategies
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Values that break naive parsers: signs, the 2**63 boundary, floats, bools, huge and special.
extreme = st.sampled_from(
    [
        -1,
        -(2**63),
        2**63 - 1,
        2**63,
        2**64,
        10**400,
        0.5,
        1.0,
        1e308,
        float("inf"),
        float("-inf"),
        float("nan"),
        True,
        False,
        None,
        "",
        "1",
        [],
        {},
        [[[]]],
        MAX_MODE + 1,
        MAX_CREATED_MS + 1,
        "../../../../etc/passwd",
        "AB" * 32,
        "g" * 64,
    ]
)

component = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,30}", fullmatch=True).filter(
    lambda n: ".." not in n
)
hex64 = st.text(HEX, min_size=64, max_size=64)
segment = st.text(
    st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))
rel_paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
metadata = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)


@st.composite
def file_entries(draw, path: str) -> FileEntry:
    chunks = draw(
        st.lists(
            st.builds(ChunkRef, hex64, st.integers(0, 2**60), st.integers(0, 2**60)),
            max_size=3,
        )
    )
    return FileEntry(
        path=path,
        size=sum(c.length for c in chunks),
        mode=draw(st.integers(0, MAX_MODE)),
        chunks=chunks,
        digest=draw(st.none() | hex64),
    )


def _without_conflicts(files: list[str], dirs: list[str]) -> tuple[list[str], list[str]]:
    """Drop paths that would be both a file and a directory (the parser refuses those)."""
    kept: list[str] = []
    for p in sorted(set(files), key=len):
        if not any(p.startswith(k + "/") for k in kept):
            kept.append(p)
    kept_dirs = [
        d
        for d in dict.fromkeys(dirs)
        if d not in kept and not any(d.startswith(k + "/") for k in kept)
    ]
    return kept, kept_dirs


@st.composite
def manifests(draw) -> Manifest:
    scope = Scope(*(draw(component) for _ in range(6)), attempt=draw(st.integers(0, 2**63 - 1)))
    paths, dirs = _without_conflicts(
        draw(st.lists(rel_paths, max_size=5)), draw(st.lists(rel_paths, max_size=3))
    )
    source = draw(st.sampled_from([{}, {"kind": "directory"}, {"kind": "parallel", "ranks": 2}]))
    stats = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "files": st.integers(0, 10**6),
                "bytes_read": st.integers(0, 2**63 - 1),
                "seconds": st.dictionaries(
                    st.sampled_from(["scan", "upload", "commit"]),
                    st.floats(0, 1e6, allow_nan=False),
                ),
                "reused": st.booleans(),
            },
        )
    )
    return Manifest(
        id=draw(st.text(HEX, min_size=16, max_size=16)),
        name=draw(names),
        scope=scope,
        latest=draw(st.booleans()),
        created_ms=draw(st.integers(0, MAX_CREATED_MS)),
        seq=draw(st.integers(0, 2**63 - 1)),
        metadata=draw(metadata),
        files=[draw(file_entries(p)) for p in paths],
        dirs=dirs,
        source=source,
        stats=stats,
        chunk_size=draw(st.integers(0, 2**40)),
    )


def _paths(value, prefix=()):
    """Every location (a tuple of keys/indices) inside a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(value, path, new):
    if not path:
        return new
    parent = value
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = new
    return value


def _parses_or_manifest_error(data, key: str):
    """The property: a Manifest (whose key is ``key``) or a ManifestError, nothing else."""
    try:
        m = loads(data, key)
    except ManifestError as exc:
        assert exc.message  # says what is wrong
        return None
    assert isinstance(m, Manifest) and m.key == key
    return m


# ------------------------------------------------------------------------------ properties
@FUZZ
@given(manifests())
def test_generated_manifests_round_trip(m):
    """A valid manifest survives dumps/loads exactly (nothing valid is refused)."""
    assert loads(m.dumps(), m.key) == m


@FUZZ
@given(manifests(), manifests(), st.permutations(list(KEY_FIELDS)))
def test_a_manifest_s_key_follows_every_change_of_its_fields(a, b, order):
    """The key a manifest keeps (ADR 009) is never stale: after each field the key is made of
    changes, it is the key a new manifest of the same fields has."""
    assert a.key == replace(a).key
    for field in order:
        setattr(a, field, getattr(b, field))
        assert a.key == replace(a).key
    assert a.key == b.key
    for field, value in (("position", Position(1, 2)), ("position", RANK0), ("sharded", True)):
        setattr(a, field, value)
        assert a.key == replace(a).key
    assert a.key != b.key  # sharded: spelled in the key


@FUZZ
@given(json_values)
def test_arbitrary_json_is_a_manifest_or_a_manifest_error(value):
    key = make_scope().task_prefix() + "1700000000000-0-000000-L-0123456789abcdef-mfchckpt.json"
    _parses_or_manifest_error(json.dumps(value).encode(), key)
    _parses_or_manifest_error(json.dumps({"format": FORMAT, **{"files": value}}).encode(), key)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_a_manifest_error(data):
    key = make_scope().task_prefix() + "1700000000000-0-000000-L-0123456789abcdef-mfchckpt.json"
    assert _parses_or_manifest_error(data, key) is None


@FUZZ
@given(manifests(), st.data())
def test_any_field_replaced_by_anything_is_a_manifest_or_a_manifest_error(m, data):
    """Every field (and every element of every field) replaced by arbitrary JSON or by an
    extreme value, or removed."""
    body = m.to_json()
    path = data.draw(st.sampled_from(list(_paths(body))))
    action = data.draw(st.sampled_from(["json", "extreme", "delete"]))
    if action == "delete" and path:
        parent = body
        for p in path[:-1]:
            parent = parent[p]
        del parent[path[-1]]
    else:
        new = data.draw(extreme if action == "extreme" else json_values)
        body = _replace(body, path, new)
    parsed = _parses_or_manifest_error(json.dumps(body).encode(), m.key)
    if parsed is not None:
        for f in parsed.files:  # whatever parses is within the documented bounds
            assert 0 <= f.size < 2**63 and 0 <= f.mode <= MAX_MODE
            assert all(len(c.blob) == 64 and c.offset + c.length <= 2**63 for c in f.chunks)


@FUZZ
@given(manifests(), st.data())
def test_numbers_replaced_in_the_text_are_a_manifest_or_a_manifest_error(m, data):
    """Number literals swapped in the raw JSON text for forms json.dumps never writes: more
    digits than Python converts, exponents that overflow, NaN/Infinity, signs."""
    text = m.dumps().decode()
    literal = data.draw(
        st.sampled_from(
            ["9" * 5000, "1e999", "-1e999", "Infinity", "-Infinity", "NaN", "-0", "1.0", "-1"]
        )
    )
    spots = [i for i, ch in enumerate(text) if ch.isdigit() and not text[i - 1].isalnum()]
    if spots:
        i = data.draw(st.sampled_from(spots))
        j = i
        while j < len(text) and text[j].isdigit():
            j += 1
        text = text[:i] + literal + text[j:]
    _parses_or_manifest_error(text.encode(), m.key)


@pytest.mark.parametrize("depth", [50, 200, 5_000, 200_000])
def test_deep_nesting_is_a_manifest_error(depth):
    """Nesting past the interpreter's recursion limit (json raises RecursionError) or past the
    documented metadata depth is a ManifestError, at the top level and inside a field."""
    m = Manifest("0123456789abcdef", "mfchckpt", make_scope(), True, 0, 0, {}, [])
    deep = "[" * depth + "]" * depth
    with pytest.raises(ManifestError):
        loads(deep.encode(), m.key)
    body = m.dumps().decode().replace('"metadata":{}', '"metadata":{"a":%s}' % deep).encode()
    if depth <= mf.MAX_JSON_DEPTH:
        assert loads(body, m.key).metadata == {"a": json.loads(deep)}
    elif depth < 500:  # parses, but deeper than metadata may be
        with pytest.raises(ManifestError, match="metadata is nested more than 64 levels"):
            loads(body, m.key)
    else:  # past the recursion limit of json itself
        with pytest.raises(ManifestError, match="RecursionError"):
            loads(body, m.key)


@FUZZ
@given(st.text(max_size=120))
def test_parse_key_of_any_string_is_a_header_or_a_manifest_error(text):
    _check_key(text)
    _check_key("manifests/" + text)


@FUZZ
@given(
    st.lists(st.text(max_size=6), min_size=6, max_size=6),
    st.lists(
        st.one_of(
            st.text("0123456789", min_size=1, max_size=25),
            st.sampled_from(["L", "N", "-", "+1", " 1", "1_0", "١", "x"]),
            hex64,
            names,
        ),
        max_size=7,
    ),
)
def test_parse_key_of_near_keys_is_a_header_or_a_manifest_error(components, fields):
    _check_key("manifests/%s/%s.json" % ("/".join(components), "-".join(fields)))


def _check_key(text: str) -> None:
    try:
        header = parse_key(text)
    except ManifestError:
        return
    assert isinstance(header, ManifestHeader) and header.key == text
    iso_time(header.created_ms)  # what every listing shows works for whatever parses
    assert header.scope.attempt >= 0 and header.seq >= 0


# ------------------------------------------------------------------------------ examples
def _body(**changes) -> tuple[bytes, str]:
    """A valid manifest's bytes with fields changed (``files`` entries as dicts), and its key."""
    m = Manifest(
        "0123456789abcdef",
        "mfchckpt",
        make_scope(),
        True,
        1_700_000_000_000,
        0,
        {},
        [FileEntry("w.bin", 10, 0o644, [ChunkRef(BLOB, 0, 10)])],
    )
    body = m.to_json()
    for path, value in changes.items():
        _replace(body, tuple(int(p) if p.isdigit() else p for p in path.split("__")), value)
    return json.dumps(body).encode(), m.key


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("files__0__size", True, r"files\[0\] \('w.bin'\).size must be an integer, not a boolean"),
        ("files__0__size", 10.0, r"size must be an integer, not a number with a fraction"),
        ("files__0__size", float("inf"), r"size must be an integer"),
        ("files__0__size", float("nan"), r"size must be an integer"),
        ("files__0__size", -10, r"size is -10, outside 0\.\."),
        ("files__0__size", 2**63, r"size is 9223372036854775808, outside"),
        ("files__0__size", 10**400, r"size is an integer of 1329 bits"),
        ("files__0__mode", 0o177777 + 1, r"mode is 65536, outside 0\.\.65535"),
        ("files__0__mode", "644", r"mode must be an integer, not a string"),
        ("files__0__chunks__0__1", -1, r"chunks\[0\].offset is -1"),
        ("files__0__chunks__0__2", 2**63, r"chunks\[0\].length is 9223372036854775808"),
        ("files__0__chunks__0__0", "../../etc/passwd", r"chunks\[0\].blob is .*not a 64-hex"),
        ("files__0__chunks__0__0", BLOB.upper(), r"chunks\[0\].blob is .*not a 64-hex"),
        ("files__0__chunks__0", [BLOB, 0], r"chunks\[0\] must be \[blob, offset, length\]"),
        ("files__0__chunks", [], r"chunks is empty but the file has 10 bytes"),
        ("files__0__chunks", {}, r"chunks must be a list, not an object"),
        ("files__0__digest", "xyz", r"digest is 'xyz', not a 64-hex"),
        ("files__0__path", "../x", r"files\[0\].path is '../x': not a plain relative path"),
        (
            "files__0__path",
            ".mfckpt-part-0123456789ab",
            r"files\[0\].path is '.mfckpt-part-0123456789ab': named like a temporary file",
        ),
        (
            "files__0__path",
            "sub/.mfckpt-load-abcd1234/w.bin",
            r"path is 'sub/.mfckpt-load-abcd1234/w.bin': named like a temporary file",
        ),
        ("files__0", "w.bin", r"files\[0\] must be an object, not a string"),
        ("files", {"w.bin": 1}, r"files must be a list, not an object"),
        ("created_ms", MAX_CREATED_MS + 1, r"created_ms is 253402300800000, outside"),
        ("seq", -1, r"seq is -1"),
        ("latest", 1, r"latest must be true or false, not 1"),
        ("scope__attempt", "0", r"scope.attempt must be an integer, not a string"),
        ("scope__task", 7, r"scope.task must be a non-empty string, not 7"),
        ("metadata", [1, 2], r"metadata must be an object, not a list"),
        ("stats__bytes_read", -5, r"stats.bytes_read is -5"),
        ("source__ranks", 0, r"source.ranks is 0, outside 1\.\."),
        ("name", "../x", r"name is '../x': not a valid checkpoint name"),
    ],
)
def test_each_malformed_field_is_a_manifest_error_naming_it(field, value, named):
    data, key = _body(**{field: value})
    with pytest.raises(ManifestError, match=named) as info:
        loads(data, key)
    assert key in info.value.message and "delete" in info.value.message


def test_offsets_past_2_63_are_refused():
    data, key = _body(files__0__chunks__0__1=2**63 - 5)
    with pytest.raises(ManifestError, match=r"chunks\[0\] ends beyond 2\*\*63"):
        loads(data, key)


def test_newer_format_says_upgrade():
    data, key = _body(format="metaflow-checkpointing/2")
    with pytest.raises(ManifestError, match="written by a newer release.*Upgrade"):
        loads(data, key)
    data, key = _body(format="something-else/1")
    with pytest.raises(ManifestError, match="has format 'something-else/1'"):
        loads(data, key)


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe{}", b"", b"null", b"[]", b"{", "é".encode("latin-1"), memoryview(b"[1]")],
)
def test_non_json_non_utf8_and_wrong_containers_are_manifest_errors(data):
    with pytest.raises(ManifestError):
        loads(data, _body()[1])


def test_non_bytes_input_is_a_manifest_error():
    with pytest.raises(ManifestError, match="must be bytes"):
        loads("{}", _body()[1])  # type: ignore[arg-type]


def test_chunk_refs_and_blob_keys_accept_only_hashes():
    """Defence in depth: a ChunkRef built anywhere (gang parts, uploads) and blob_key refuse a
    name that is not a 64-hex digest, so it can never become a storage key or a path."""
    for bad in ("../../x", BLOB.upper(), BLOB[:-1], BLOB + "0", "", None, 7):
        with pytest.raises(ManifestError):
            blob_key(bad)  # type: ignore[arg-type]
        with pytest.raises(ManifestError):
            ChunkRef(bad, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ManifestError):
        ChunkRef(BLOB, -1, 1)
    with pytest.raises(ManifestError):
        ChunkRef(BLOB, 0, True)
    assert blob_key(BLOB) == "blobs/ab/" + BLOB


def test_crafted_blob_name_never_opens_a_file_outside_the_store(tmp_path):
    """A manifest whose blob name climbs out of the store to a FIFO is refused when read; it
    used to reach the local store's fast path, which opened the FIFO and hung forever."""
    root = tmp_path / "store"
    fifo = tmp_path / "outside" / "fifo"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    storage = LocalStorage(str(root))
    store = CheckpointStore(storage)
    # blobs/<name[:2]>/<name> = blobs/../../outside/fifo: tmp_path/outside/fifo
    name = "../outside/fifo"
    assert os.path.realpath(root / "blobs" / name[:2] / name) == os.path.realpath(fifo)
    m = Manifest("0123456789abcdef", "mfchckpt", make_scope(), True, 1_700_000_000_000, 0, {}, [])
    body = m.to_json()
    body["files"] = [{"path": "x", "size": 1, "mode": 0o644, "chunks": [[name, 0, 1]]}]
    storage.put_bytes(m.key, json.dumps(body).encode())

    outcome: list = []

    def load() -> None:
        try:
            store.load(store.read(m.key), str(tmp_path / "dest"))
            outcome.append("loaded")
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)  # a hang must not block the suite
    worker.start()
    worker.join(30)
    assert outcome, "loading a crafted manifest hung (it opened the FIFO outside the store)"
    assert isinstance(outcome[0], ManifestError), outcome
    assert "files[0] ('x').chunks[0].blob" in outcome[0].message


# ------------------------------------------------------------------------------ metadata limit
def test_metadata_limit_counts_utf8_bytes(store, tmp_path):
    """The 64 KiB metadata limit counts the UTF-8 bytes stored: 20,000 'é' (40,000 bytes) are
    accepted, though JSON's ASCII escapes (\\u00e9, 6 bytes each) would make them 120,000."""
    note = "é" * 20_000
    assert len(json.dumps(note).encode()) > mf.MAX_METADATA_BYTES  # what used to be counted
    src = tmp_path / "state.txt"
    src.write_text("x")
    saved = store.save(str(src), make_scope(), metadata={"note": note, "emoji": "🙂" * 2_000})
    assert store.read(saved.key).metadata == {"note": note, "emoji": "🙂" * 2_000}


def test_metadata_over_the_limit_names_its_utf8_byte_count():
    over = {"note": "é" * 33_000}
    size = len(json.dumps(over, ensure_ascii=False).encode("utf-8"))
    assert size == 66_012
    with pytest.raises(
        CheckpointConfigError, match="is 66012 bytes as JSON .UTF-8.; the limit is 65536"
    ):
        mf.validate_metadata(over)


def test_metadata_nested_deeper_than_the_parser_reads_is_refused_at_save():
    """What save() accepts, loads() reads: metadata nested past MAX_JSON_DEPTH is refused when
    saved, not discovered when loaded."""
    deep: list = []  # the dict holding it is one level, each list another
    for _ in range(mf.MAX_JSON_DEPTH - 2):
        deep = [deep]
    assert mf.validate_metadata({"a": deep}) == {"a": deep}
    with pytest.raises(CheckpointConfigError, match="nested more than 64 levels deep"):
        mf.validate_metadata({"a": [deep]})
