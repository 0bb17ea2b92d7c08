"""The store checker (``core/verify.py``): every kind of damage injected for real into memory,
local and S3 (moto) stores is reported with the key that names it, and the check never writes."""

from __future__ import annotations

import json
import os
import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import gang, verify
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
    LEASE_ALIVE,
    LEASE_START,
    LEASES_PREFIX,
    blob_key,
    lease_key,
    lease_names_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import manifest_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope, library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import digest
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointNotFound
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import CHUNK, make_scope, options, rand, sample_spec, write_tree


def populate(store: CheckpointStore, tmp_path, n: int = 3) -> list:
    """``n`` checkpoints of one task (multi-chunk and packed files) and a named one."""
    out = []
    for i in range(n):
        src = write_tree(tmp_path / ("src-%d" % i), sample_spec(seed=i))
        out.append(store.save(str(src), make_scope(), metadata={"epoch": i}))
    model = write_tree(tmp_path / "model", {"w.bin": rand(3 * CHUNK, 77)})
    out.append(store.save(str(model), library_scope("resnet"), name="resnet"))
    return out


def end_sessions(storage) -> None:
    """End the writer sessions of the saves so far: remove their leases (as closing their
    store does), so that only manifests keep blobs alive."""
    storage.delete_many([o.key for o in storage.list(LEASES_PREFIX)])


def objects(storage) -> dict:
    """Every stored object and its bytes."""
    return {o.key: storage.get_bytes(o.key) for o in storage.list("")}


def blobs_of(manifest, packed: bool = False) -> list:
    """Distinct blobs of a checkpoint: of packed small files, or of large (chunked) files."""
    return sorted(
        {c.blob for f in manifest.files if (f.digest is not None) == packed for c in f.chunks}
    )


def chunk_of(manifest, path: str) -> str:
    return next(f for f in manifest.files if f.path == path).chunks[0].blob


def run(store: CheckpointStore, keys=None, **kwargs) -> verify.VerifyReport:
    return verify.verify(store.storage, keys, options=store.options, **kwargs)


# ------------------------------------------------------------------------------ clean
@pytest.mark.parametrize("deep", [False, True])
def test_a_clean_store_is_ok_and_nothing_is_written(any_store, tmp_path, deep):
    saved = populate(any_store, tmp_path)
    before = objects(any_store.storage)
    report = run(any_store, deep=deep)
    assert report.ok, report.rows()
    assert report.problems == 0 and report.rows() == []
    assert report.manifests == report.checkpoints_ok == len(saved)
    assert report.files == sum(len(m.files) for m in saved)
    assert report.logical_bytes == sum(m.size for m in saved)
    assert report.blobs_referenced == len(
        {c.blob for m in saved for f in m.files for c in f.chunks}
    )
    assert report.blob_check == "listing" and report.whole_store
    assert report.unreferenced == [] and report.orphaned_leases == []
    if deep:
        stored = sum(o.size for o in any_store.storage.list("blobs/"))
        assert report.bytes_hashed == stored
    assert "OK: 4 intact checkpoints." in report.summary()
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok"] is True and doc["manifests"] == 4 and doc["unreferenced"]["blobs"] == 0
    assert objects(any_store.storage) == before


def test_a_few_keys_are_checked_one_blob_at_a_time(any_store, tmp_path):
    saved = populate(any_store, tmp_path)
    report = run(any_store, [saved[0].key], target="one")
    assert report.ok and report.manifests == 1 and report.blob_check == "exists"
    assert report.unreferenced is None and report.orphaned_leases is None
    assert "checked only for the whole store" in report.summary()
    assert verify.single(any_store.storage, saved[0].key) == [saved[0].key]
    with pytest.raises(CheckpointNotFound, match="No checkpoint with key"):
        verify.single(any_store.storage, saved[0].key.replace(".json", "x.json"))


# ------------------------------------------------------------------------------ missing blobs
@pytest.mark.parametrize("mode", ["whole", "exists", "deep"])
def test_a_deleted_blob_names_the_checkpoint_and_its_files(any_store, tmp_path, mode):
    saved = populate(any_store, tmp_path)
    victim = saved[1]
    gone = chunk_of(victim, "model/weights.bin")  # only in this checkpoint
    any_store.storage.delete(blob_key(gone))
    keys = None if mode == "whole" else [m.key for m in saved]
    report = run(any_store, keys, deep=mode == "deep")
    assert not report.ok
    assert [m.key for m in report.missing] == [victim.key]
    assert report.missing[0].blobs == {gone: ["model/weights.bin"]}
    assert report.missing[0].files == ["model/weights.bin"]
    assert report.checkpoints_ok == len(saved) - 1
    assert report.blob_check == {"whole": "listing", "exists": "exists", "deep": "read"}[mode]
    (row,) = report.rows()
    assert row[:2] == ("MISSING", victim.key) and "model/weights.bin" in row[2]
    assert "1 checkpoint with missing blobs; 3 of 4 checkpoints intact" in report.summary()


def test_many_blobs_are_checked_with_one_listing(store, tmp_path, monkeypatch):
    saved = populate(store, tmp_path)
    monkeypatch.setattr(verify, "EXISTS_LIMIT", 2)
    gone = blobs_of(saved[0], packed=True)[0]
    store.storage.delete(blob_key(gone))
    report = run(store, [m.key for m in saved])
    assert report.blob_check == "listing"
    assert [m.key for m in report.missing] == [saved[0].key]
    # A packed blob holds several small files: all of them are named.
    assert set(report.missing[0].files) >= {"model/config.json", "optimizer.pt"}


# ------------------------------------------------------------------------------ corrupt blobs
def flip(storage, key: str, at: int = 100) -> None:
    data = bytearray(storage.get_bytes(key))
    data[at] ^= 0x01
    storage.put_bytes(key, bytes(data))


@pytest.mark.parametrize("window", [None, 4096])
def test_a_flipped_byte_is_found_only_by_deep(any_store, tmp_path, window):
    saved = populate(any_store, tmp_path)
    chunk, pack = chunk_of(saved[2], "model/weights.bin"), blobs_of(saved[2], packed=True)[0]
    flip(any_store.storage, blob_key(chunk))
    flip(any_store.storage, blob_key(pack), at=10)  # inside the first packed file
    keys = [m.key for m in saved]
    assert run(any_store, keys).ok  # same size: only re-hashing can tell
    # A window smaller than a chunk: blobs and packed files are hashed across windows.
    opts = options(chunk_size=window) if window else any_store.options
    report = verify.verify(any_store.storage, keys, deep=True, options=opts)
    assert not report.ok and report.missing == []
    assert {c.blob: c.key for c in report.corrupt} == {
        chunk: blob_key(chunk),
        pack: blob_key(pack),
    }
    by_blob = {c.blob: c for c in report.corrupt}
    assert by_blob[chunk].problems == ["content does not match its BLAKE3 hash"]
    assert by_blob[chunk].checkpoints == {saved[2].key: ["model/weights.bin"]}
    first = sorted(f for f in saved[2].files if f.digest and f.chunks[0].offset == 0)
    assert first, "the pack starts with a packed file"
    assert any(
        "file %s of %s does not match its recorded hash" % (first[0].path, saved[2].key) in p
        for p in by_blob[pack].problems
    )
    assert report.checkpoints_ok == 3 and report.inconsistent == []
    assert [r[0] for r in report.rows()] == ["CORRUPT", "CORRUPT"]


def test_a_truncated_blob_is_found_from_the_listing_without_deep(any_store, tmp_path):
    """A blob shorter than its slices no longer matches its hash: the blob is corrupt, and every
    checkpoint using it is broken (a load verifies the whole blob), here two of them."""
    saved = populate(any_store, tmp_path)
    chunk = chunk_of(saved[0], "model/weights.bin")
    sharer = copy_manifest(any_store.storage, saved[0])  # another task, same blobs
    data = any_store.storage.get_bytes(blob_key(chunk))
    any_store.storage.put_bytes(blob_key(chunk), data[:1000])
    for deep in (False, True):
        report = run(any_store, deep=deep)
        assert [c.blob for c in report.corrupt] == [chunk] and report.inconsistent == []
        assert report.corrupt[0].problems[0] == "content does not match its BLAKE3 hash"
        assert report.corrupt[0].problems[1].startswith("holds 1000 bytes, but model/weights.bin")
        assert set(report.corrupt[0].checkpoints) == {saved[0].key, sharer}
        assert report.checkpoints_ok == len(saved) - 1
        if not deep:  # only the blob a slice reaches past was read back, to decide
            assert report.bytes_hashed == 1000


# ------------------------------------------------------------------------------ blame
def copy_manifest(storage, good, task: str = "2", edit=None) -> str:
    """Store a copy of ``good``'s manifest as a checkpoint of another task (so it shares every
    blob of ``good``), after ``edit(body)``; return its key."""
    body = json.loads(storage.get_bytes(good.key))
    body["scope"]["task"] = task
    if edit is not None:
        edit(body)
    key = manifest_key(
        Scope.from_dict(body["scope"]),
        body["created_ms"],
        body["seq"],
        body["latest"],
        body["id"],
        body["name"],
    )
    storage.put_bytes(key, json.dumps(body).encode())
    return key


def file_of(body: dict, path: str) -> dict:
    return next(f for f in body["files"] if f["path"] == path)


@pytest.mark.parametrize("mode", ["whole", "whole-deep", "keys-deep"])
def test_a_slice_past_a_good_blob_is_only_the_declaring_checkpoints_problem(
    any_store, tmp_path, mode
):
    """A crafted manifest pointing 1 GB into a blob that another (good) checkpoint uses: the
    blob matches its hash and size, so the crafted checkpoint alone is reported; the good one
    counts as intact and the shared blob is not called corrupt."""
    saved = populate(any_store, tmp_path)
    good = saved[0]
    chunk = chunk_of(good, "model/weights.bin")

    def past_the_end(body):
        f = file_of(body, "model/weights.bin")
        f["chunks"][0] = [chunk, 10**9, f["chunks"][0][2]]

    bad = copy_manifest(any_store.storage, good, edit=past_the_end)
    deep = mode != "whole"
    keys = None if mode.startswith("whole") else [m.key for m in saved] + [bad]
    report = run(any_store, keys, deep=deep)
    assert report.corrupt == [] and report.missing == [] and report.damaged == []
    assert report.manifests == len(saved) + 1
    assert report.checkpoints_ok == len(saved)  # the good checkpoint sharing the blob included
    (found,) = report.inconsistent
    assert found.key == bad and list(found.files) == ["model/weights.bin"]
    (what,) = found.files["model/weights.bin"]
    assert what.startswith("needs bytes %d to %d of blob %s" % (10**9, 10**9 + CHUNK, chunk))
    assert "which holds only %d bytes (and matches its hash)" % CHUNK in what
    (row,) = report.rows()
    assert row[:2] == ("INCONSISTENT", bad) and row[2].startswith("model/weights.bin: needs")
    assert "1 inconsistent checkpoint; %d of %d" % (len(saved), len(saved) + 1) in report.summary()
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["inconsistent"] == [{"key": bad, "files": found.files}] and doc["corrupt"] == []
    assert run(any_store, [good.key], deep=deep).ok


def test_a_wrong_packed_file_digest_is_only_the_declaring_checkpoints_problem(any_store, tmp_path):
    """The mirror case: two checkpoints share a pack; one manifest records a wrong digest for a
    packed file.  The pack matches its hash, so only that checkpoint and file are reported."""
    saved = populate(any_store, tmp_path)
    good = saved[0]
    pack = chunk_of(good, "model/config.json")
    assert next(f for f in good.files if f.path == "model/config.json").digest is not None

    def wrong_digest(body):
        file_of(body, "model/config.json")["digest"] = digest(b"something else")

    bad = copy_manifest(any_store.storage, good, edit=wrong_digest)
    report = run(any_store, deep=True)
    assert report.corrupt == [] and report.missing == [] and report.damaged == []
    assert report.checkpoints_ok == len(saved)
    (found,) = report.inconsistent
    assert found.key == bad and list(found.files) == ["model/config.json"]
    (what,) = found.files["model/config.json"]
    assert what.startswith("does not match its recorded hash (bytes ")
    assert "of blob %s, which matches its own hash)" % pack in what
    assert [row[:2] for row in report.rows()] == [("INCONSISTENT", bad)]
    assert run(any_store, [good.key], deep=True).ok
    # Only re-hashing can tell: the slice is within its blob.
    assert run(any_store).ok


def test_a_corrupt_shared_blob_still_breaks_every_checkpoint_using_it(any_store, tmp_path):
    """The other side of the line: a flipped byte in a shared pack is the blob's defect, even
    when a crafted manifest also points past its end."""
    saved = populate(any_store, tmp_path)
    good = saved[0]
    pack = chunk_of(good, "model/config.json")

    def past_the_end(body):
        f = file_of(body, "model/config.json")
        f["chunks"][0] = [pack, 10**9, f["chunks"][0][2]]

    bad = copy_manifest(any_store.storage, good, edit=past_the_end)
    flip(any_store.storage, blob_key(pack), at=0)
    for deep in (False, True):
        report = run(any_store, deep=deep)
        assert [c.blob for c in report.corrupt] == [pack] and report.inconsistent == []
        assert report.corrupt[0].problems[0] == "content does not match its BLAKE3 hash"
        assert set(report.corrupt[0].checkpoints) == {good.key, bad}
        assert report.checkpoints_ok == len(saved) - 1


# ------------------------------------------------------------------------------ damaged entries
def beside(good, id: str) -> str:
    """A well-formed manifest key next to ``good`` (same task), with another id."""
    return manifest_key(good.scope, good.created_ms + 1, good.seq, good.latest, id, good.name)


def test_damaged_entries_are_reported_with_their_reason_and_the_rest_is_checked(
    any_store, tmp_path
):
    saved = populate(any_store, tmp_path)
    s = any_store.storage
    good = saved[0]
    body = json.loads(s.get_bytes(good.key))
    expected = {
        beside(good, "0000000000000001"): verify.UNPARSABLE,
        beside(good, "0000000000000002"): verify.NEWER_FORMAT,
        beside(good, "0000000000000003"): verify.KEY_MISMATCH,
        good.key.rsplit("/", 1)[0] + "/notes.txt": verify.UNRECOGNIZED_KEY,
        good.key: verify.INVALID,
        saved[1].key: verify.INVALID,
    }
    keys = list(expected)
    s.put_bytes(keys[0], s.get_bytes(good.key)[:100])  # truncated
    s.put_bytes(keys[1], json.dumps(dict(body, format="metaflow-checkpointing/2")).encode())
    s.put_bytes(keys[2], s.get_bytes(good.key))  # copied under another key
    s.put_bytes(keys[3], b"hello")
    negative = [{"path": "x", "size": -1, "mode": 420, "chunks": [["ab" * 32, 0, -1]]}]
    s.put_bytes(good.key, json.dumps(dict(body, files=negative)).encode())
    # A blob name that is a path: refused before it reaches any storage call.
    hostile = json.loads(s.get_bytes(saved[1].key))
    hostile["files"] = [{"path": "a", "size": 3, "mode": 420, "chunks": [["../../../x", 0, 3]]}]
    s.put_bytes(saved[1].key, json.dumps(hostile).encode())

    report = run(any_store)
    assert {d.key: d.reason for d in report.damaged} == expected
    errors = {d.reason: d.error for d in report.damaged}
    assert "metaflow-checkpointing/2" in errors[verify.NEWER_FORMAT]
    assert "moved or tampered" in errors[verify.KEY_MISMATCH]
    # The intact checkpoints are still checked.
    assert report.checkpoints_ok == 2 and report.missing == [] and report.corrupt == []
    assert report.manifests == 7  # 2 intact + 5 damaged manifests (not the stray notes.txt)
    assert [row[0] for row in report.rows()].count("DAMAGED") == 6 and not report.ok
    assert "6 damaged entries" in report.summary()


# ------------------------------------------------------------------------------ unreferenced
def test_unreferenced_blobs_are_what_gc_would_reclaim(any_store, tmp_path):
    saved = populate(any_store, tmp_path)
    end_sessions(any_store.storage)
    any_store.delete(saved[0].key)
    only_first = {c.blob for f in saved[0].files for c in f.chunks} - {
        c.blob for m in saved[1:] for f in m.files for c in f.chunks
    }
    report = run(any_store)
    assert {o.key for o in report.unreferenced} == {blob_key(h) for h in only_first}
    assert report.unreferenced_bytes > 0
    assert report.to_json()["unreferenced"]["keys"] == sorted(blob_key(h) for h in only_first)
    assert not report.ok and report.problems == 1
    assert report.rows()[0][0] == "UNREFERENCED"
    # GC with no grace period reclaims exactly those; then the store is clean.
    gc = any_store.gc(grace_seconds=0)
    assert gc.blobs_deleted == len(only_first)
    assert gc.bytes_reclaimed == report.unreferenced_bytes
    assert run(any_store).ok


def test_blobs_of_a_parallel_part_not_committed_yet_are_not_unreferenced(store, tmp_path):
    populate(store, tmp_path)
    scope = make_scope(step="gang", task="9")
    src = write_tree(tmp_path / "rank1", {"shard.bin": rand(2 * CHUNK, 5)})
    gid = gang.gang_id(scope, "mfchckpt", 0)
    part = store.save(
        str(src), scope, publish=lambda m: gang.write_part(store.storage, scope, gid, 1, m)
    )
    report = run(store)
    assert report.ok, report.rows()
    assert {c.blob for f in part.files for c in f.chunks} <= {
        o.key.rsplit("/", 1)[1] for o in store.storage.list("blobs/")
    }
    # A part that cannot be read is reported (GC cannot know what it references).
    key = next(o.key for o in store.storage.list("parts/"))
    store.storage.put_bytes(key, b"{not json")
    report = run(store)
    assert [(d.key, d.reason) for d in report.damaged] == [(key, verify.UNPARSABLE)]


def test_orphaned_leases_are_reported_and_live_ones_protect_their_blobs(tmp_path):
    """An expired lease still stored is reported; a live lease keeps the blobs it names, and
    those uploaded since it started, off the unreferenced list (as GC keeps them)."""
    storage = LocalStorage(str(tmp_path / "store"))
    store = CheckpointStore(storage, options())
    saved = populate(store, tmp_path)
    end_sessions(storage)
    store.delete(saved[0].key)
    named, old = blobs_of(saved[0])[:2]  # only in the deleted checkpoint
    hour_ago = time.time() - 3600
    for path in (tmp_path / "store" / "blobs").rglob("*"):
        os.utime(path, (hour_ago, hour_ago))
    storage.put_bytes(lease_key("dead", LEASE_START), b'{"ttl": 60}')
    storage.put_bytes(lease_key("dead", LEASE_ALIVE), b"")
    for path in (tmp_path / "store" / "leases" / "dead").iterdir():
        os.utime(path, (hour_ago, hour_ago))
    storage.put_bytes(lease_key("live", LEASE_START), b'{"ttl": 600}')
    storage.put_bytes(lease_key("live", LEASE_ALIVE), b"")
    storage.put_bytes(lease_names_key("live", 0), json.dumps({"blobs": [named]}).encode())
    fresh = rand(1000, 5)  # uploaded by the live session: protected by its start time
    storage.put_bytes(blob_key(digest(fresh)), fresh)

    report = run(store)
    assert [(lease.session, lease.keys) for lease in report.orphaned_leases] == [
        ("dead", ("leases/dead/alive", "leases/dead/start"))
    ]
    unreferenced = {o.key for o in report.unreferenced}
    assert blob_key(old) in unreferenced
    assert blob_key(named) not in unreferenced and blob_key(digest(fresh)) not in unreferenced
    assert ("LEASE", "leases/dead") in [row[:2] for row in report.rows()]
    assert report.to_json()["orphaned_leases"][0]["session"] == "dead"
    # Once the live lease has expired too, nothing protects those blobs any more.
    later = run(store, now=time.time() + 3600)
    assert {lease.session for lease in later.orphaned_leases} == {"dead", "live"}
    assert {blob_key(named), blob_key(digest(fresh))} <= {o.key for o in later.unreferenced}
    # A names-* object that cannot be read is damaged: GC cannot know what it protects.
    storage.put_bytes(lease_names_key("live", 1), b"{truncated")
    assert [(d.key, d.reason) for d in run(store).damaged] == [
        (lease_names_key("live", 1), verify.UNPARSABLE)
    ]


# ------------------------------------------------------------------------------ races, progress
class PruneDuringCheck(MemoryStorage):
    """A store where another client deletes a checkpoint and collects its blobs while the check
    looks for blobs (after it has read the manifests)."""

    victim = None

    def _race(self) -> None:
        if self.victim is not None:
            key, blobs = self.victim
            self.victim = None
            self._delete(key)
            for h in blobs:
                self._delete(blob_key(h))

    def _exists(self, key):
        if key.startswith("blobs/"):
            self._race()
        return super()._exists(key)

    def _list(self, prefix):
        if prefix == "blobs/":
            self._race()
        return super()._list(prefix)


@pytest.mark.parametrize("whole", [False, True])
def test_a_checkpoint_deleted_during_the_check_is_not_reported_missing(tmp_path, whole):
    storage = PruneDuringCheck()
    store = CheckpointStore(storage, options())
    saved = populate(store, tmp_path)
    storage.victim = (saved[0].key, blobs_of(saved[0]))
    keys = None if whole else [m.key for m in saved]
    report = verify.verify(storage, keys, options=options())
    assert storage.victim is None  # the race happened
    assert report.missing == [] and report.manifests == 4, report.rows()


def test_progress_reports_each_phase_to_its_total(store, tmp_path):
    populate(store, tmp_path)
    seen: list = []
    report = run(
        store, deep=True, progress=lambda phase, done, total: seen.append((phase, done, total))
    )
    phases = [p for p, _d, _t in seen]
    assert phases[0] == "manifests" and phases[-1] == "bytes"
    assert phases == sorted(phases, key=["manifests", "bytes"].index)  # one phase after another
    last = {p: (d, t) for p, d, t in seen}
    assert last["manifests"] == (4, 4)
    assert last["bytes"] == (report.bytes_hashed, report.bytes_hashed)


# ------------------------------------------------------------------------------ S3
@pytest.mark.s3
def test_verify_on_s3(s3_env, tmp_path):
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        storage_for_url,
    )

    bucket = s3_env["new_bucket"]()
    store = CheckpointStore(storage_for_url("s3://%s/ckpt" % bucket), options())
    saved = populate(store, tmp_path, n=2)
    assert run(store, deep=True).ok
    chunk, pack = blobs_of(saved[0])[0], blobs_of(saved[1], packed=True)[0]
    store.storage.delete(blob_key(chunk))
    flip(store.storage, blob_key(pack), at=10)
    store.storage.put_bytes(saved[1].key[:-5] + "-x.json", b'{"format": "metaflow-checkpointing/9"')
    report = run(store, deep=True)
    assert [m.key for m in report.missing] == [saved[0].key]
    assert [c.blob for c in report.corrupt] == [pack]
    assert [d.reason for d in report.damaged] == [verify.UNPARSABLE]
    shallow = run(store, [m.key for m in saved])
    assert shallow.blob_check == "exists" and [m.key for m in shallow.missing] == [saved[0].key]
