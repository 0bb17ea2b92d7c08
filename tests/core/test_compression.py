"""``compression="zstd"``: blobs stored compressed when it pays, loaded and verified plain.

What a user relies on: a compressed save loads back byte for byte (local, memory and S3); the
manifest says per blob how it is stored; a blob's identity stays the hash of its plain bytes,
so saves with and without compression share blobs; a damaged compressed blob is an integrity
error naming the file, and a codec this release does not know is refused before any file is
written; GC and ``verify`` treat compressed blobs as blobs.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import codec, verify
from metaflow_extensions.checkpointing.plugins.checkpointing.core import manifest as mf
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import digest
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointDependencyError,
    CheckpointIntegrityError,
    ManifestError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import CHUNK, SMALL, make_scope, options, rand, snapshot, write_tree

ZSTD = options(compression="zstd")
PLAIN = options()


def text(n: int, seed: int) -> bytes:
    """``n`` bytes of log-like text (compresses ~5-10x)."""
    r = random.Random(seed)
    lines = []
    size = 0
    while size < n:
        line = b'{"step": %d, "loss": %.4f, "lr": 0.001, "phase": "train"}\n' % (
            r.randrange(10**6),
            r.random(),
        )
        lines.append(line)
        size += len(line)
    return b"".join(lines)[:n]


def mixed_spec(seed: int = 0) -> dict:
    """Compressible and incompressible files, chunked and packed."""
    return {
        "logs/train.jsonl": text(3 * CHUNK + 77, seed),  # chunked, compresses
        "model/weights.bin": rand(2 * CHUNK + 5, seed),  # chunked, does not compress
        "metrics.csv": text(SMALL // 2, seed + 1),  # packed
        "noise.bin": rand(300, seed + 2),  # packed
        "empty.txt": b"",
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
    }


@pytest.fixture(params=["memory", "local", pytest.param("s3", marks=pytest.mark.s3)])
def make_storage(request, tmp_path):
    """Fresh storages (one root each call) of one backend."""
    n = [0]

    def make():
        n[0] += 1
        if request.param == "memory":
            return MemoryStorage()
        if request.param == "local":
            return LocalStorage(str(tmp_path / ("store%d" % n[0])))
        from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
            storage_for_url,
        )

        bucket = request.getfixturevalue("s3_env")["new_bucket"]()
        return storage_for_url("s3://%s/ckpt%d" % (bucket, n[0]))

    return make


def names(m: mf.Manifest, path: str) -> list:
    return [c.blob for f in m.files if f.path == path for c in f.chunks]


def load_into(store: CheckpointStore, m: mf.Manifest, dest: Path) -> dict:
    store.load(store.read(m.key), str(dest))
    return snapshot(dest)


# ------------------------------------------------------------------------------ round trips
def test_a_compressed_save_records_each_blob_and_loads_identically(make_storage, tmp_path):
    """Text blobs are stored as ``<hash>.zst`` (one zstd frame of the plain bytes whose BLAKE3
    is the name); random weights and a 77-byte tail stay plain: compressing would not pay."""
    store = CheckpointStore(make_storage(), ZSTD)
    src = write_tree(tmp_path / "src", mixed_spec())
    m = store.read(store.save(str(src), make_scope()).key)
    logs = names(m, "logs/train.jsonl")
    assert len(logs) == 4 and all(b.endswith(".zst") for b in logs[:3]) and "." not in logs[3]
    assert not any("." in b for b in names(m, "model/weights.bin"))
    packed = names(m, "metrics.csv")[0]
    assert packed == names(m, "noise.bin")[0] and packed.endswith(".zst")
    for name in logs[:3] + [packed]:
        stored = store.storage.get_bytes(blob_key(name))
        plain = zstandard.ZstdDecompressor().decompress(stored)
        assert digest(plain) == name[:-4] and len(stored) < len(plain)
    assert m.stats["bytes_stored"] < m.stats["bytes_uploaded"]
    assert json.loads(store.storage.get_bytes(m.key))["format"] == mf.FORMAT
    assert load_into(store, m, tmp_path / "dest") == snapshot(src)
    with store.open(m, "logs/train.jsonl") as f:  # ranged reads of a compressed file
        f.seek(CHUNK - 10)
        assert f.read(30) == (src / "logs/train.jsonl").read_bytes()[CHUNK - 10 : CHUNK + 20]
    with store.open(m, "metrics.csv") as f:
        assert f.read() == (src / "metrics.csv").read_bytes()


def test_a_plain_save_is_unchanged(tmp_path):
    """Without compression, manifests and blobs are what they were before codecs existed."""
    store = CheckpointStore(MemoryStorage(), PLAIN)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    body = json.loads(store.storage.get_bytes(m.key))
    assert "bytes_stored" not in body["stats"]
    assert all(len(c[0]) == 64 for f in body["files"] for c in f["chunks"]), (
        "plain blobs are named by their hash alone"
    )


tree = st.dictionaries(
    st.sampled_from(["a.txt", "b/c.log", "b/d.bin", "e.bin", "f/g/h.json"]),
    st.tuples(
        st.sampled_from(["text", "random", "zeros"]),
        st.sampled_from([0, 1, 100, SMALL - 1, SMALL, CHUNK, CHUNK + 1, 2 * CHUNK + 17]),
        st.integers(0, 3),
    ),
    min_size=1,
)


def _materialise(spec: dict, root: Path) -> Path:
    files = {}
    for rel, (kind, n, seed) in spec.items():
        files[rel] = text(n, seed) if kind == "text" else rand(n, seed) if kind else bytes(n)
        if kind == "zeros":
            files[rel] = bytes(n)
    return write_tree(root, files)


@pytest.mark.parametrize("backend", ["memory", "local", pytest.param("s3", marks=pytest.mark.s3)])
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=tree, second=tree, codecs=st.sampled_from([(1, 1), (1, 0), (0, 1), (0, 0)]))
def test_any_mix_of_compressed_and_plain_saves_round_trips(request, backend, first, second, codecs):
    """Two saves into one store, each compressed or not, over trees sharing files: both load
    back exactly, every blob named once in whichever form was stored first."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if backend == "memory":
            storage = MemoryStorage()
        elif backend == "local":
            storage = LocalStorage(str(root / "store"))
        else:
            from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
                storage_for_url,
            )

            bucket = request.getfixturevalue("s3_env")["new_bucket"]()
            storage = storage_for_url("s3://%s/ckpt" % bucket)
        saved = []
        for i, (spec, zst) in enumerate(zip((first, {**first, **second}), codecs)):
            store = CheckpointStore(storage, ZSTD if zst else PLAIN)  # a new process each time
            src = _materialise(spec, root / ("src%d" % i))
            saved.append((src, store.save(str(src), make_scope(), name="n%d" % i)))
        reader = CheckpointStore(storage, PLAIN)
        for i, (src, m) in enumerate(saved):
            assert load_into(reader, m, root / ("dest%d" % i)) == snapshot(src)
        stored = {o.key.rsplit("/", 1)[1] for o in storage.list("blobs/")}
        assert len({n.split(".")[0] for n in stored}) == len(stored) or codecs == (1, 0)
        assert verify.verify(storage, deep=True).ok


# ------------------------------------------------------------------------------ dedup
def test_turning_compression_on_reuses_every_plain_blob(make_storage, tmp_path):
    """A compressed save of content already stored plain uploads nothing: the blob's name is
    the hash of its plain bytes, and the compressed save looks for both forms."""
    storage = make_storage()
    src = write_tree(tmp_path / "src", mixed_spec())
    plain = CheckpointStore(storage, PLAIN).save(str(src), make_scope(), name="a")
    again = CheckpointStore(storage, ZSTD).save(str(src), make_scope(), name="b")
    assert again.stats["bytes_uploaded"] == 0 and again.stats["blobs_uploaded"] == 0
    assert [f.chunks for f in again.files] == [f.chunks for f in plain.files]


def test_compressed_blobs_are_reused_by_later_compressed_saves(make_storage, tmp_path):
    """Another process saving the same content compressed uploads nothing.  A plain save looks
    for the plain form only (one existence check, as before codecs): it stores a plain copy of
    each blob stored only compressed, once, and shares everything else."""
    storage = make_storage()
    src = write_tree(tmp_path / "src", mixed_spec())
    first = CheckpointStore(storage, ZSTD).save(str(src), make_scope(), name="a")
    again = CheckpointStore(storage, ZSTD).save(str(src), make_scope(), name="b")
    assert again.stats["bytes_uploaded"] == 0
    assert [f.chunks for f in again.files] == [f.chunks for f in first.files]
    plain = CheckpointStore(storage, PLAIN).save(str(src), make_scope(), name="c")
    compressed = {c.blob for f in first.files for c in f.chunks if "." in c.blob}
    assert plain.stats["blobs_uploaded"] == len(compressed)
    assert not any("." in c.blob for f in plain.files for c in f.chunks)
    # From then on both settings find a copy: nothing is uploaded again.
    for settings_ in (PLAIN, ZSTD):
        m = CheckpointStore(storage, settings_).save(str(src), make_scope(), name="d")
        assert m.stats["bytes_uploaded"] == 0


# ------------------------------------------------------------------------------ faults
def _compressed_chunk(m: mf.Manifest) -> str:
    return names(m, "logs/train.jsonl")[1]


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "other_frame", "empty", "trailing", "second_frame"]
)
def test_a_damaged_compressed_blob_is_an_integrity_error_naming_the_file(
    make_storage, tmp_path, damage
):
    """A flipped byte, a cut frame, a valid frame of other bytes, an empty object, or bytes
    after the frame (garbage or a second frame): the load fails naming the file and the blob,
    and writes nothing, and deep verify finds the same blob corrupt (one rule for both)."""
    store = CheckpointStore(make_storage(), ZSTD)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    key = blob_key(_compressed_chunk(m))
    data = store.storage.get_bytes(key)
    if damage == "flip":
        data = data[:40] + bytes([data[40] ^ 0x10]) + data[41:]
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "trailing":
        data += b"GARBAGE" * 100
    elif damage == "second_frame":
        data += zstandard.ZstdCompressor(write_content_size=True).compress(text(1000, 7))
    else:
        data = zstandard.ZstdCompressor().compress(text(CHUNK, 99))
    store.storage.put_bytes(key, data)
    dest = tmp_path / "dest"
    with pytest.raises(CheckpointIntegrityError) as err:
        store.load(store.read(m.key), str(dest))
    assert "logs/train.jsonl" in str(err.value) and _compressed_chunk(m) in str(err.value)
    assert err.value.path == "logs/train.jsonl"
    assert not dest.exists() or not os.listdir(dest)
    opened = store.open(store.read(m.key), "logs/train.jsonl")
    with pytest.raises(CheckpointIntegrityError), opened as f:  # a ranged read of it too
        f.seek(CHUNK + 5)
        f.read(50)
    report = verify.verify(store.storage, deep=True)
    assert [c.blob for c in report.corrupt] == [_compressed_chunk(m)]


def test_a_frame_declaring_more_than_a_blob_may_hold_is_refused(tmp_path, monkeypatch):
    """A hostile object cannot make a load allocate more than a blob may hold (the limit,
    5 GiB, lowered here so that the test's frame passes it)."""
    store = CheckpointStore(MemoryStorage(), ZSTD)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    monkeypatch.setattr(codec, "MAX_PLAIN", CHUNK - 1)
    dest = tmp_path / "dest"
    with pytest.raises(CheckpointIntegrityError, match="content size"):
        store.load(store.read(m.key), str(dest))
    assert not dest.exists()


def test_an_unknown_codec_is_refused_naming_it_before_any_file_is_written(tmp_path):
    store = CheckpointStore(MemoryStorage(), ZSTD)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    body = store.storage.get_bytes(m.key).decode()
    name = _compressed_chunk(m)
    store.storage.put_bytes(m.key, body.replace(name, name[:-4] + ".lz4").encode())
    with pytest.raises(ManifestError) as err:
        store.read(m.key)
    assert "'lz4'" in str(err.value) and "upgrade" in str(err.value)
    assert not (tmp_path / "dest").exists()


def test_a_missing_zstandard_names_the_extra(monkeypatch):
    """Without the package, asking for zstd fails at once, naming what to install."""
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    with pytest.raises(CheckpointDependencyError) as err:
        options(compression="zstd")
    assert 'pip install "metaflow-checkpointing[zstd]"' in str(err.value)
    assert isinstance(err.value, ImportError)
    assert options(compression=None).compression is None  # plain needs nothing


@pytest.mark.parametrize("value", ["gzip", 3, "zstd:9"])
def test_an_unknown_compression_setting_says_what_is_accepted(value):
    with pytest.raises(CheckpointConfigError, match="'zstd', or None"):
        codec.check_setting(value, "Step 'train': @checkpoint")


@pytest.mark.parametrize("value", [None, "none", "", "ZSTD", " zstd "])
def test_accepted_compression_settings(value):
    expected = "zstd" if value and value.strip() and value.strip().lower() == "zstd" else None
    assert codec.check_setting(value) == expected


# ------------------------------------------------------------------------------ store tools
def test_gc_keeps_referenced_compressed_blobs_and_collects_unreferenced_ones(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), ZSTD)
    keep = store.save(str(write_tree(tmp_path / "a", mixed_spec(1))), make_scope(), name="a")
    drop = store.save(str(write_tree(tmp_path / "b", mixed_spec(2))), make_scope(), name="b")
    store.close()  # end the writer's lease: its blobs are judged by references alone
    store.storage.delete(drop.key)
    report = store.gc(grace_seconds=0)
    left = {o.key.rsplit("/", 1)[1] for o in store.storage.list("blobs/")}
    assert left == {c.blob for f in keep.files for c in f.chunks}
    assert any(n.endswith(".zst") for n in left) and report.blobs_deleted > 0
    assert load_into(store, keep, tmp_path / "dest") == snapshot(tmp_path / "a")


def test_shallow_verify_does_not_mistake_a_smaller_compressed_blob_for_a_truncated_one(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), ZSTD)
    store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    report = verify.verify(store.storage)
    assert report.ok and report.bytes_hashed == 0
    assert verify.verify(store.storage, deep=True, options=options(chunk_size=4096)).ok


@pytest.mark.parametrize(
    "damage, whole",
    [(d, w) for d in ("empty", "not_a_frame", "shorter_frame") for w in (True, False)]
    + [("grown", True)],  # sizes come from a listing only
)
def test_shallow_verify_finds_a_compressed_blob_whose_header_or_size_is_wrong(
    tmp_path, damage, whole
):
    """Without --deep, each compressed blob's first bytes are read: an empty object, one that
    is not a zstd frame or a frame declaring another plain size is read back and reported
    corrupt, both when the whole store is listed and when a checkpoint's blobs are checked one
    by one; so is an object larger than a compressed blob of its size is ever stored at, when
    a listing gives sizes."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), ZSTD)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    key = blob_key(_compressed_chunk(m))
    data = store.storage.get_bytes(key)
    plain = zstandard.ZstdDecompressor().decompress(data)
    data = {
        "empty": b"",
        "not_a_frame": b"GARBAGE" * 100,
        "shorter_frame": zstandard.ZstdCompressor(write_content_size=True).compress(plain[:-10]),
        "grown": data + rand(len(plain), 5),
    }[damage]
    store.storage.put_bytes(key, data)
    report = verify.verify(store.storage, None if whole else [m.key])
    assert not report.ok
    assert [c.blob for c in report.corrupt] == [_compressed_chunk(m)]


def test_a_task_context_carries_the_codec_to_child_processes(tmp_path):
    """Processes started by a compressed task (torchrun workers) save compressed too."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
        TASK_ENV,
        TaskContext,
    )

    (tmp_path / "dir").mkdir()
    ctx = TaskContext(
        str(tmp_path / "store"), make_scope(), str(tmp_path / "dir"), compression="zstd"
    )
    assert TaskContext.from_env({TASK_ENV: ctx.to_env()}).compression == "zstd"
    plain = TaskContext(str(tmp_path / "store"), make_scope(), str(tmp_path / "dir"))
    assert "compression" not in json.loads(plain.to_env())
    assert TaskContext.from_env({TASK_ENV: plain.to_env()}).compression is None
    bad = dict(json.loads(plain.to_env()), compression="lz4")
    with pytest.raises(CheckpointConfigError, match="compression"):
        TaskContext.from_env({TASK_ENV: json.dumps(bad)})


def test_a_sharded_save_of_compressed_parts_commits_and_loads(tmp_path):
    """Two participants of a sharded save (``@parallel``) each store their shard compressed;
    the committed checkpoint names the compressed blobs of both and loads back whole."""
    import threading

    from metaflow_extensions.checkpointing.plugins.checkpointing.core import gang

    storage = LocalStorage(str(tmp_path / "store"))
    scope = make_scope(step="gang", task="9")
    shards = [
        write_tree(tmp_path / ("rank%d" % r), {"shard-%d.jsonl" % r: text(CHUNK + 9, r)})
        for r in range(2)
    ]
    out: dict = {}

    def participant(r: int) -> None:
        store = CheckpointStore(storage, ZSTD)
        out[r] = store.save_gang(
            str(shards[r]), scope, name="mfchckpt", metadata={}, latest=True,
            participant=gang.Participant("node", r, 2), number=0, timeout=60,
        )  # fmt: skip

    threads = [threading.Thread(target=participant, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert out[0].key == out[1].key
    m = CheckpointStore(storage, PLAIN).read(out[0].key)
    assert {f.path for f in m.files} == {"rank-0/shard-0.jsonl", "rank-1/shard-1.jsonl"}
    assert all(f.chunks[0].blob.endswith(".zst") for f in m.files)
    dest = tmp_path / "dest"
    CheckpointStore(storage, PLAIN).load(m, str(dest))
    for r in range(2):
        name = "shard-%d.jsonl" % r
        assert (dest / ("rank-%d" % r) / name).read_bytes() == (shards[r] / name).read_bytes()


def test_verify_refuses_a_frame_declaring_more_than_a_blob_may_hold(tmp_path, monkeypatch):
    store = CheckpointStore(MemoryStorage(), ZSTD)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    monkeypatch.setattr(codec, "MAX_PLAIN", CHUNK - 1)
    report = verify.verify(store.storage, deep=True)
    assert _compressed_chunk(m) in {c.blob for c in report.corrupt}
    problems = {c.blob: c.problems for c in report.corrupt}[_compressed_chunk(m)]
    assert any("content size" in p for p in problems)


def test_loading_a_compressed_checkpoint_without_zstandard_names_the_extra(tmp_path, monkeypatch):
    """A notebook without the package: the load fails naming what to install and leaves no
    directory behind."""
    store = CheckpointStore(MemoryStorage(), ZSTD)
    m = store.save(str(write_tree(tmp_path / "src", mixed_spec())), make_scope())
    manifest = store.read(m.key)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    with pytest.raises(CheckpointDependencyError, match=r"metaflow-checkpointing\[zstd\]"):
        store.load(manifest, str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def test_du_counts_compressed_bytes_and_a_plain_and_a_compressed_copy_both(tmp_path):
    """``du``'s physical bytes are the stored (compressed) bytes; a plain save after a
    compressed one of the same content stores a second, plain copy, and both are counted."""
    data = text(40 * 1024, 7)
    write_tree(tmp_path / "src", {"log.txt": data})
    zstd = CheckpointStore(LocalStorage(str(tmp_path / "store")), ZSTD)
    zstd.save(str(tmp_path / "src"), make_scope(task="1"))
    plain = CheckpointStore(LocalStorage(str(tmp_path / "store")), PLAIN)
    plain.save(str(tmp_path / "src"), make_scope(task="2"))
    sizes = {i.key: i.size for i in plain.storage.list("blobs/")}
    compressed = [k for k in sizes if k.endswith(".zst")]
    assert compressed and len(sizes) == 2
    report = plain.usage(plain.headers(""), by="flow")
    assert report.total.logical_bytes == 2 * len(data)
    assert report.total.physical_bytes == sum(sizes.values())
    assert sizes[compressed[0]] < len(data) // 2  # counted compressed, not as its plain size
