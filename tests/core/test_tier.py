"""The local tier of ``@checkpoint(upload="end")`` and the upload of one of its checkpoints
(``core/tier.py``): the flow's store gets the identical manifest under the same key, every blob
it lacks checked against its hash, nothing committed on any failure, nothing lost to a garbage
collection running meanwhile.

Real stores: the tier on local disk, the flow's store on local disk and on a real local S3
server (moto).  Faults are injected at the storage boundary (a backend subclass that fails a
call, a byte flipped on disk); collections are the real ``gc`` in this process at a forced
moment, or in another process looping beside the uploads.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import layout
from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    CheckpointNotFound,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import CHUNK, SMALL, make_scope, options, rand, sample_spec, snapshot, write_tree
from .test_gc_protocol import HookedLocal, age, blobs_of, stored_blobs

FAST = RetryPolicy(attempts=2, max_seconds=5, backoff=0.01, max_backoff=0.02)


def _s3_storage(request, suffix: str = ""):
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import s3_config
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import S3Storage

    bucket = request.getfixturevalue("s3_env")["new_bucket"]()
    return S3Storage(
        "s3://%s/ckpt%s" % (bucket, suffix), retry=FAST, timeout=30, config=s3_config()
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def remote(request, tmp_path):
    """The flow's store: a local directory, then a bucket of a real local S3 server."""
    if request.param == "local":
        storage = LocalStorage(str(tmp_path / "remote"))
    else:
        storage = _s3_storage(request)
    store = CheckpointStore(storage, options())
    yield store
    store.close()


def _tier(remote: CheckpointStore, tmp_path: Path) -> CheckpointStore:
    return T.open_tier(remote, str(tmp_path / "base"))


def _objects(storage) -> dict:
    """Every object of a store with its bytes (what a user's data is)."""
    return {o.key: storage.get_bytes(o.key) for o in storage.list("")}


def _committed(storage) -> set:
    return {o.key for o in storage.list(layout.MANIFESTS_PREFIX)}


# ------------------------------------------------------------------------------ where it lives
def test_tier_root_is_stable_per_store_and_distinct_between_stores(tmp_path):
    base = str(tmp_path)
    a = T.tier_root("s3://bucket/ckpt", base)
    assert a == T.tier_root("s3://bucket/ckpt", base)  # every attempt finds the same tier
    assert os.path.dirname(a) == os.path.join(base, "mfckpt-tier-%d" % os.getuid())  # per user
    name = os.path.basename(a)
    assert len(name) == 16 and all(c in "0123456789abcdef" for c in name)
    others = {T.tier_root(u, base) for u in ("s3://bucket/ckpt2", "s3://other/ckpt", "/data/c")}
    assert a not in others and len(others) == 3
    assert T.tier_root("s3://bucket/ckpt", "~") == T.tier_root(
        "s3://bucket/ckpt", os.path.expanduser("~")
    )
    for bad in ("", "  ", None):
        with pytest.raises(CheckpointConfigError, match="temp_dir_root"):
            T.tier_root("s3://bucket/ckpt", bad)


def test_open_tier_makes_a_private_store_with_the_flow_stores_options(tmp_path):
    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")), options(compression="zstd"))
    tier = _tier(remote, tmp_path)
    assert tier.url == T.tier_root(remote.url, str(tmp_path / "base"))
    assert stat.S_IMODE(os.stat(tier.url).st_mode) == 0o700
    assert tier.options == remote.options and tier.options is not remote.options
    # Opened again (a retry on this machine): the same tier, what it holds still there.
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    saved = tier.save(str(src), make_scope())
    assert _tier(remote, tmp_path).read(saved.key).key == saved.key


def test_a_tier_that_cannot_be_created_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")), options())
    with pytest.raises(CheckpointConfigError) as info:
        T.open_tier(remote, str(tmp_path / "file"))
    assert str(tmp_path / "file") in info.value.message
    assert "METAFLOW_CHECKPOINT_LOCAL_TIER" in info.value.message


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_an_uploaded_checkpoint_is_the_tiers_bit_for_bit(remote, tmp_path, compression):
    remote.options = remote.options.with_compression(compression)
    tier = _tier(remote, tmp_path)
    spec = sample_spec(3)
    spec["text.log"] = b"loss 0.1\n" * 20000  # compresses: stored .zst with zstd
    src = write_tree(tmp_path / "src", spec)
    saved = tier.save(str(src), make_scope(), metadata={"epoch": 3, "loss": 0.1})
    assert remote.headers(make_scope().task_prefix()) == []

    done = T.upload(tier, remote, saved.key)
    assert not done.already and done.key == saved.key and done.blobs == len(blobs_of(saved))
    assert done.bytes == sum(len(tier.storage.get_bytes(blob_key(b))) for b in blobs_of(saved))
    # The identical manifest under the same key: a reference taken from the tier names it.
    assert remote.storage.get_bytes(saved.key) == tier.storage.get_bytes(saved.key)
    if compression:
        assert any(b.endswith(".zst") for b in blobs_of(saved))
    got = remote.read(saved.key)
    assert got.metadata == {"epoch": 3, "loss": 0.1}
    remote.load(got, str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert [h.key for h in remote.headers(make_scope().task_prefix())] == [saved.key]


def test_a_second_upload_moves_nothing(remote, tmp_path):
    tier = _tier(remote, tmp_path)
    saved = tier.save(str(write_tree(tmp_path / "src", sample_spec(1))), make_scope())
    T.upload(tier, remote, saved.key)
    before = _objects(remote.storage)
    again = T.upload(tier, remote, saved.key)
    assert again.already and (again.blobs, again.bytes) == (0, 0)
    assert again.manifest.key == saved.key
    after = _objects(remote.storage)
    assert {k: v for k, v in after.items() if not k.startswith("leases/")} == {
        k: v for k, v in before.items() if not k.startswith("leases/")
    }


def test_a_blob_the_store_already_has_is_not_uploaded_again(remote, tmp_path):
    shared = {"frozen/layers.bin": rand(3 * CHUNK + 5, 1), "tokenizer.json": rand(SMALL // 2, 2)}
    # The flow's store already holds a checkpoint with the shared files (an earlier task).
    remote.save(str(write_tree(tmp_path / "earlier", shared)), make_scope(task="6"))
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", dict(shared, **{"head.bin": rand(CHUNK + 9, 3)}))
    saved = tier.save(str(src), make_scope())
    had = stored_blobs(remote.storage)
    done = T.upload(tier, remote, saved.key)
    new = blobs_of(saved) - had
    assert blobs_of(saved) & had  # the shared chunks are deduplicated ...
    assert done.blobs == len(new) == 2  # ... only head.bin's two chunks move
    assert done.bytes == CHUNK + 9
    remote.load(remote.read(saved.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_a_key_not_in_the_tier_is_not_found(remote, tmp_path):
    tier = _tier(remote, tmp_path)
    key = layout.manifest_key(make_scope().task_prefix(), 1, 0, 0, True, "abc", "m")
    with pytest.raises(CheckpointNotFound, match="local tier"):
        T.upload(tier, remote, key)


# ------------------------------------------------------------------------------ faults
def _first_blob_path(tier: CheckpointStore, saved) -> str:
    name = sorted(blobs_of(saved))[0]
    return tier.storage.local_path(blob_key(name))


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_corrupt_tier_blob_fails_the_upload_and_commits_nothing(remote, tmp_path, compression):
    remote.options = remote.options.with_compression(compression)
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", {"log.txt": b"step loss\n" * 30000, "w.bin": rand(CHUNK, 1)})
    saved = tier.save(str(src), make_scope())
    for name in blobs_of(saved):
        path = tier.storage.local_path(blob_key(name))
        data = bytearray(Path(path).read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit flipped at rest
        Path(path).write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError) as info:
        T.upload(tier, remote, saved.key)
    assert info.value.key == saved.key and saved.key in info.value.message
    assert _committed(remote.storage) == set()
    # Nothing corrupt reached the store under a blob's name either (checked before the put).
    assert stored_blobs(remote.storage) == set()


def test_a_blob_missing_from_the_tier_fails_the_upload_and_commits_nothing(remote, tmp_path):
    tier = _tier(remote, tmp_path)
    saved = tier.save(str(write_tree(tmp_path / "src", sample_spec(2))), make_scope())
    os.unlink(_first_blob_path(tier, saved))
    with pytest.raises(CheckpointIncomplete) as info:
        T.upload(tier, remote, saved.key)
    assert info.value.key == saved.key
    assert _committed(remote.storage) == set()


class Failing(HookedLocal):
    """A flow store whose puts of blobs fail (permanently) once ``fail_after`` blobs went in."""

    fail_after = 1

    def _fail(self) -> None:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise PermissionError(13, "injected: access denied")
            self.fail_after -= 1

    def _put_bytes(self, key, data):
        if key.startswith(layout.BLOBS_PREFIX):
            self._fail()
        super()._put_bytes(key, data)

    def ingest_range(self, src, offset, length, digest, key_for):  # the in-kernel copy
        self._fail()
        return super().ingest_range(src, offset, length, digest, key_for)


def test_a_storage_failure_mid_upload_commits_nothing_and_a_later_upload_succeeds(tmp_path):
    storage = Failing(str(tmp_path / "remote"), retry=FAST)
    remote = CheckpointStore(storage, options(workers=1))
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", sample_spec(4))
    saved = tier.save(str(src), make_scope())
    with pytest.raises(StorageError, match="injected"):
        T.upload(tier, remote, saved.key)
    assert _committed(storage) == set()
    assert remote.headers(make_scope().task_prefix()) == []
    storage.fail_after = None  # the store is back
    done = T.upload(tier, remote, saved.key)
    assert not done.already and 0 < done.blobs < len(blobs_of(saved))  # the first one stayed
    remote.load(remote.read(saved.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_abort_stops_between_blobs_and_commits_nothing(tmp_path):
    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")), options(workers=1))
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", sample_spec(5))
    saved = tier.save(str(src), make_scope())
    asked = []

    def abort():
        asked.append(1)
        return "the time allowed after SIGTERM ran out" if len(asked) > 2 else None

    with pytest.raises(T.UploadAbandoned) as info:
        T.upload(tier, remote, saved.key, abort=abort)
    assert "SIGTERM" in info.value.message and info.value.key == saved.key
    assert _committed(remote.storage) == set()
    assert len(stored_blobs(remote.storage)) == 2  # it stopped after two blobs
    done = T.upload(tier, remote, saved.key, abort=lambda: None)
    remote.load(remote.read(done.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


# ------------------------------------------------------------------------------ GC meanwhile
def _collect(storage):
    return CheckpointStore(storage, options()).gc(grace_seconds=0)


def _stale_in_remote(storage, tmp_path: Path, files: dict) -> set:
    """``files``' blobs in the flow's store, unreferenced and an hour old (their checkpoint was
    pruned long ago; another checkpoint keeps the root from looking empty)."""
    writer = CheckpointStore(storage, options())
    pruned = writer.save(str(write_tree(tmp_path / "old", files)), make_scope(run="1"))
    writer.save(
        str(write_tree(tmp_path / "keep", {"k": rand(100, 9)})), make_scope(run="1", task="8")
    )
    writer.delete(pruned.key)
    writer.close()
    age(storage, [blob_key(h) for h in blobs_of(pruned)], 3600)
    return blobs_of(pruned)


SHARED = {"frozen/layers.bin": rand(3 * CHUNK + 100, 11), "tokenizer.json": rand(SMALL // 2, 12)}


def test_gc_just_after_the_upload_found_a_blob_stored_makes_it_copy_the_blob_again(tmp_path):
    storage = HookedLocal(str(tmp_path / "remote"))
    old = _stale_in_remote(storage, tmp_path, SHARED)
    remote = CheckpointStore(storage, options())
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", dict(SHARED, **{"head.bin": rand(CHUNK, 13)}))
    saved = tier.save(str(src), make_scope(run="2"))
    reports = []
    storage.when(
        "exists",
        lambda k: k.rsplit("/", 1)[1] in old,
        lambda: reports.append(_collect(storage)),
        after=True,
    )
    done = T.upload(tier, remote, saved.key)
    assert reports and reports[0].blobs_deleted == len(old)  # GC removed what it had seen
    assert done.blobs == len(blobs_of(saved))  # ... and the upload copied them again
    remote.load(remote.read(saved.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_gc_just_before_the_manifest_is_written_keeps_what_the_upload_relies_on(tmp_path):
    storage = HookedLocal(str(tmp_path / "remote"))
    old = _stale_in_remote(storage, tmp_path, SHARED)
    remote = CheckpointStore(storage, options())
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", dict(SHARED, **{"head.bin": rand(CHUNK, 14)}))
    saved = tier.save(str(src), make_scope(run="2"))
    reports = []
    storage.when(
        "put",
        lambda k: k.startswith(layout.MANIFESTS_PREFIX),
        lambda: reports.append(_collect(storage)),
    )
    done = T.upload(tier, remote, saved.key)
    # The old blobs were named by the upload's lease, head.bin's chunk credited to it.
    assert reports and reports[0].blobs_deleted == 0 and reports[0].blobs_leased == len(old) + 1
    assert done.blobs == 1  # only head.bin moved: the old blobs were relied on, and kept
    remote.load(remote.read(saved.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


_GC_LOOP = textwrap.dedent(
    """
    import json, sys, time
    import metaflow  # noqa: F401
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (
        TransferOptions,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

    root, stop, out = sys.argv[1:4]
    deleted, runs, end = 0, 0, time.time() + 120
    store = CheckpointStore(LocalStorage(root), TransferOptions(chunk_size=65536, workers=2))
    import os
    while not os.path.exists(stop) and time.time() < end:
        report = store.gc(grace_seconds=0)
        deleted += report.blobs_deleted
        runs += 1
    with open(out, "w") as f:
        json.dump({"deleted": deleted, "runs": runs}, f)
    """
)


def test_uploads_racing_a_collection_in_another_process_lose_nothing(tmp_path):
    """A real GC process loops (no grace period) while this one uploads tier checkpoints that
    reuse old unreferenced blobs of the flow's store; every round also leaves unreferenced
    garbage for GC to delete.  Every uploaded checkpoint loads, every blob verified."""
    root = str(tmp_path / "remote")
    storage = LocalStorage(root)
    remote = CheckpointStore(storage, options())
    tier = _tier(remote, tmp_path)
    stop, out = tmp_path / "stop", tmp_path / "gc.json"
    # Started once the root is not empty (GC refuses to collect an empty-looking root).
    _stale_in_remote(storage, tmp_path / "r0", {"x": rand(CHUNK, 99)})
    gc = subprocess.Popen([sys.executable, "-c", _GC_LOOP, root, str(stop), str(out)])
    uploaded = []
    try:
        for i in range(12):
            files = {"frozen.bin": rand(2 * CHUNK + i, 100 + i), "tok.txt": rand(3000 + i, 200 + i)}
            _stale_in_remote(storage, tmp_path / ("r%d" % (i + 1)), files)  # reused below
            _stale_in_remote(storage, tmp_path / ("g%d" % i), {"junk": rand(CHUNK, 300 + i)})
            src = write_tree(
                tmp_path / ("src%d" % i), dict(files, **{"own.bin": rand(CHUNK, 400 + i)})
            )
            saved = tier.save(str(src), make_scope(run="2", task=str(i)))
            T.upload(tier, remote, saved.key)
            uploaded.append((saved.key, src))
            time.sleep(0.05)
    finally:
        stop.write_text("")
        assert gc.wait(timeout=180) == 0
    report = json.loads(out.read_text())
    assert report["runs"] > 1 and report["deleted"] > 0  # the race is not vacuous
    for i, (key, src) in enumerate(uploaded):
        dest = tmp_path / ("out%d" % i)
        remote.load(remote.read(key), str(dest))
        assert snapshot(dest) == snapshot(src)


_FROZEN_UPLOADER = textwrap.dedent(
    """
    import os, signal, sys
    import metaflow  # noqa: F401
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (
        TransferOptions,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

    class Frozen(LocalStorage):
        def _put_bytes(self, key, data):
            if key.startswith("manifests/"):
                os.kill(os.getpid(), signal.SIGSTOP)  # a paused VM, just before the commit
            super()._put_bytes(key, data)

    root, base, key = sys.argv[1:4]
    opts = TransferOptions(chunk_size=65536, small_size=16384, workers=4)
    remote = CheckpointStore(Frozen(root), opts, lease_seconds=1.0)
    done = T.upload(T.open_tier(remote, base), remote, key)
    print(done.key, done.blobs)
    """
)


def test_an_upload_frozen_past_its_lease_before_the_commit_restores_what_gc_removed(tmp_path):
    """SIGSTOP between the settle and the manifest put, for longer than the lease: GC deletes
    the old blobs the upload relied on.  After its commit the upload finds them gone and copies
    them again from the tier, so the checkpoint it reports committed loads."""
    root = tmp_path / "remote"
    storage = LocalStorage(str(root))
    old = _stale_in_remote(storage, tmp_path, SHARED)
    remote = CheckpointStore(storage, options())
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", dict(SHARED, **{"head.bin": rand(CHUNK, 15)}))
    saved = tier.save(str(src), make_scope(run="2"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _FROZEN_UPLOADER, str(root), str(tmp_path / "base"), saved.key],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with open("/proc/%d/stat" % proc.pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the uploader never reached its commit")
        time.sleep(2.5)  # its lease (1 s) has expired for GC
        deleted = _collect(storage).blobs_deleted
        assert deleted >= len(old)  # the old blobs went (and head.bin's, its lease expired)
    finally:
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    key, blobs = out.split()
    # head.bin's chunk, then every blob GC removed, copied again from the tier.
    assert key == saved.key and int(blobs) == 1 + deleted
    remote.load(remote.read(key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_two_processes_uploading_one_checkpoint_at_once_both_succeed(tmp_path):
    """The end of an attempt and a user's upload of the same tier checkpoint race: each commits
    the identical manifest, so whichever lands last changes nothing."""
    root = tmp_path / "remote"
    remote = CheckpointStore(LocalStorage(str(root)), options())
    tier = _tier(remote, tmp_path)
    src = write_tree(tmp_path / "src", sample_spec(6))
    saved = tier.save(str(src), make_scope())
    script = textwrap.dedent(
        """
        import sys
        import metaflow  # noqa: F401
        from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
        from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (
            CheckpointStore,
        )
        from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (
            TransferOptions,
        )
        from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
            LocalStorage,
        )

        root, base, key = sys.argv[1:4]
        remote = CheckpointStore(LocalStorage(root), TransferOptions(chunk_size=65536))
        print(T.upload(T.open_tier(remote, base), remote, key).key)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(tmp_path / "base"), saved.key],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _out, err in outs]
    assert [out.strip() for out, _err in outs] == [saved.key, saved.key]
    assert _committed(remote.storage) == {saved.key}
    assert remote.storage.get_bytes(saved.key) == tier.storage.get_bytes(saved.key)
    remote.load(remote.read(saved.key), str(tmp_path / "out"))
    assert snapshot(tmp_path / "out") == snapshot(src)


# ------------------------------------------------------------------------------ one tier per user
def _plant(base: Path, remote: CheckpointStore, how: str) -> str:
    """Make this machine's tier path (or its per-user parent) what another user could leave:
    ``owner`` (theirs: chown, as root can), ``mode`` (ours, but 0o777), ``symlink`` (the tier a
    symlink to a directory of theirs), ``parent-symlink``; returns the path at fault."""
    root = T.tier_root(remote.url, str(base))
    parent = os.path.dirname(root)
    if how == "parent-symlink":
        target = base / "theirs"
        target.mkdir(mode=0o700)
        os.symlink(target, parent)
        return parent
    os.makedirs(parent, mode=0o700)
    if how == "symlink":
        target = base / "theirs"
        target.mkdir(mode=0o700)
        os.symlink(target, root)
        return root
    os.mkdir(root, 0o700)
    if how == "owner":
        os.chown(parent, 65534, 65534)
        return parent
    os.chmod(root, 0o777)
    return root


@pytest.mark.parametrize("how", ["owner", "mode", "symlink", "parent-symlink"])
def test_open_tier_refuses_a_tier_another_user_could_have_planted(tmp_path, how):
    """A tier (or its per-user parent) that is a symlink, another user's, or group/other
    accessible is refused before anything in it is read: its checkpoints would be loaded and
    uploaded as ours.  The error names the path, the owner and mode found, and the setting."""
    if how == "owner" and os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")))
    bad = _plant(tmp_path, remote, how)
    with pytest.raises(CheckpointConfigError) as info:
        T.open_tier(remote, str(tmp_path))
    message = info.value.message
    assert "Refusing the local checkpoint tier %s" % T.tier_root(remote.url, str(tmp_path)) in (
        message
    )
    assert bad in message and "owner uid" in message and "mode 0o" in message
    assert "METAFLOW_CHECKPOINT_LOCAL_TIER" in message
    assert {"owner": "another user", "mode": "group or others", "symlink": "symlink"}.get(
        how, "symlink"
    ) in message


def test_a_fresh_tier_and_its_parent_are_private_to_the_user(tmp_path):
    remote = CheckpointStore(LocalStorage(str(tmp_path / "remote")))
    old = os.umask(0)  # even under a permissive umask
    try:
        tier = T.open_tier(remote, str(tmp_path))
    finally:
        os.umask(old)
    root = T.tier_root(remote.url, str(tmp_path))
    for path in (root, os.path.dirname(root)):
        st = os.lstat(path)
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert tier.url == LocalStorage(root).url
    T.open_tier(remote, str(tmp_path))  # and reopening it is fine


SECOND_USER = """
import os, sys
from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
remote = CheckpointStore(LocalStorage(sys.argv[1]))
tier = T.open_tier(remote, sys.argv[2])
src = sys.argv[3]
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
print(T.tier_root(remote.url, sys.argv[2]))
print(tier.save(src, Scope("user:bob", "F", "s", "_", "1", "1", 0)).key)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to a second uid needs root")
def test_a_second_user_on_the_machine_gets_a_tier_of_its_own(tmp_path):
    """Two users with the same store URL and base: each saves into a tier of its own (before:
    the second user's first save failed with a PermissionError in the first user's tier)."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="tier-users-"))  # pytest's tmp is root-only (0o700)
    os.chmod(top, 0o755)
    try:
        _second_user(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _second_user(tmp_path: Path) -> None:
    base, src, remote_dir = tmp_path / "base", tmp_path / "src", tmp_path / "remote"
    for d in (base, src, remote_dir):
        d.mkdir()
        os.chmod(d, 0o1777)
    (src / "a.txt").write_text("bob's")
    os.chmod(src / "a.txt", 0o644)
    remote = CheckpointStore(LocalStorage(str(remote_dir)))
    mine = T.open_tier(remote, str(base))
    mine.save(str(src), make_scope())
    other = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
        + [SECOND_USER, str(remote_dir), str(base), str(src)],
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert other.returncode == 0, other.stderr[-2000:]
    their_root, key = other.stdout.split()[:2]
    assert their_root == os.path.join(str(base), "mfckpt-tier-65534", os.path.basename(their_root))
    assert their_root != T.tier_root(remote.url, str(base))
    assert os.lstat(os.path.dirname(their_root)).st_uid == 65534
    # And ours refuses theirs: their parent directory is not ours.
    assert key.startswith("manifests/")


OPEN_AS_SECOND_USER = """
import sys
from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
try:
    T.open_tier(CheckpointStore(LocalStorage(sys.argv[1])), sys.argv[2])
except CheckpointConfigError as exc:
    print(exc.message)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to a second uid needs root")
def test_a_shared_base_another_user_created_0755_names_the_base_and_says_1777(tmp_path):
    """The first user created the shared base with mode 0755: the second user's error names
    the base (its owner and mode), not the tier path that does not exist, and says a shared
    base needs mode 1777."""
    import shutil
    import tempfile

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    top = Path(tempfile.mkdtemp(prefix="tier-base-"))  # pytest's tmp is root-only (0o700)
    try:
        os.chmod(top, 0o755)
        remote_dir, base = top / "remote", top / "base"
        remote_dir.mkdir()
        remote = CheckpointStore(LocalStorage(str(remote_dir)))
        T.open_tier(remote, str(base))  # the first user: the base is created 0o755
        assert stat.S_IMODE(os.stat(base).st_mode) == 0o755
        other = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
            + [OPEN_AS_SECOND_USER, str(remote_dir), str(base)],
            capture_output=True,
            text=True,
            env=dict(os.environ, HOME=str(top)),
        )
        message = other.stdout
        assert "may not create directories in %s (owner uid 0, mode 0o755" % base in message, (
            message + other.stderr[-2000:]
        )
        assert "1777" in message and "METAFLOW_CHECKPOINT_LOCAL_TIER" in message
        assert "chmod 700" not in message
    finally:
        shutil.rmtree(top, ignore_errors=True)
