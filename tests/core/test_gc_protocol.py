"""Garbage collection never deletes a blob a committed or committing checkpoint needs: the lease
protocol of ``core/leases.py`` and ``core/gc.py`` (docs/design/adr-002-gc-liveness.md), each
interleaving that used to lose data run for real on the memory and local stores.

Interleavings are forced with a storage subclass that runs a callback when the code under test
makes a given storage call (``Hooked``): the real save and the real GC run, nothing of ours is
mocked.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import gang, layout
from metaflow_extensions.checkpointing.plugins.checkpointing.core import leases as ls
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.lease_writer import WriterLease
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    ManifestError,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import CHUNK, SMALL, make_scope, options, rand, snapshot, write_tree


# ------------------------------------------------------------------------------------ helpers
class Hooked:
    """Storage mixin: ``when(ops, match, fn)`` runs ``fn()`` once, at the first call of one of
    ``ops`` (put, get, exists, list, delete, ingest) on a matching key, before the call or after.
    Every call is recorded in ``calls``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hooks: list = []
        self.calls: list = []
        self._hook_lock = threading.Lock()
        self._in_range = threading.local()

    def when(self, ops, match, fn, after: bool = False) -> dict:
        ops = {ops} if isinstance(ops, str) else set(ops)
        hook = {"ops": ops, "match": match, "fn": fn, "after": after, "fired": False}
        self.hooks.append(hook)
        return hook

    def _fire(self, op: str, key: str, after: bool) -> None:
        if not after:
            self.calls.append((op, key))
        for hook in self.hooks:
            with self._hook_lock:
                due = (
                    not hook["fired"]
                    and op in hook["ops"]
                    and hook["after"] == after
                    and hook["match"](key)
                )
                if due:
                    hook["fired"] = True
            if due:
                hook["fn"]()
                return  # one hook per call: hooks registered alike fire on successive calls

    def _put_bytes(self, key, data):
        self._fire("put", key, False)
        super()._put_bytes(key, data)
        self._fire("put", key, True)

    def _get_bytes(self, key, start, length):
        self._fire("get", key, False)
        return super()._get_bytes(key, start, length)

    def _exists(self, key):
        self._fire("exists", key, False)
        found = super()._exists(key)
        self._fire("exists", key, True)
        return found

    def _list(self, prefix):
        self._fire("list", prefix, False)
        out = list(super()._list(prefix))
        self._fire("list", prefix, True)
        return iter(out)

    def _delete(self, key):
        self._fire("delete", key, False)
        super()._delete(key)

    def ingest_range(self, src, offset, length, digest, key_for):
        self._in_range.on = True  # LocalStorage.ingest_range goes through ingest_filled
        try:
            done = super().ingest_range(src, offset, length, digest, key_for)
        finally:
            self._in_range.on = False
        if done is not None:
            self._fire("ingest", key_for(done[0]), True)
        return done

    def ingest_filled(self, length, fill, digest, key_for):
        # Packs of small files copied in the kernel (local stores) are blob writes too.
        done = super().ingest_filled(length, fill, digest, key_for)
        if done is not None and not getattr(self._in_range, "on", False):
            self._fire("ingest", key_for(done[0]), True)
        return done


class HookedMemory(Hooked, MemoryStorage):
    pass


class HookedLocal(Hooked, LocalStorage):
    pass


@pytest.fixture(params=["memory", "local"])
def storage(request, tmp_path):
    if request.param == "memory":
        return HookedMemory()
    return HookedLocal(str(tmp_path / "store"))


def age(storage, keys, seconds: float) -> None:
    """Make objects look ``seconds`` old (content saved long ago)."""
    then = time.time() - seconds
    for key in keys:
        if isinstance(storage, MemoryStorage):
            with storage._lock:
                data, _ = storage._objects[key]
                storage._objects[key] = (data, then)
        else:
            os.utime(storage.local_path(key), (then, then))


def blobs_of(manifest) -> set:
    return {c.blob for f in manifest.files for c in f.chunks}


def stored_blobs(storage) -> set:
    return {o.key.rsplit("/", 1)[1] for o in storage.list("blobs/")}


def content_x(tmp_path: Path) -> Path:
    """A tokenizer/frozen-layers-like tree: a chunked file and packed small files."""
    return write_tree(
        tmp_path / "x",
        {
            "frozen/layers.bin": rand(3 * CHUNK + 100, 1),
            "tokenizer.json": rand(SMALL // 2, 2),
            "config.json": b'{"vocab": 32000}',
        },
    )


def stale(storage, tmp_path: Path):
    """Content whose only checkpoint retention pruned an hour ago: its blobs are old and
    unreferenced (another checkpoint keeps the root from looking empty)."""
    writer = CheckpointStore(storage, options())
    src = content_x(tmp_path)
    pruned = writer.save(str(src), make_scope(run="1"))
    other = write_tree(tmp_path / "other", {"o.bin": rand(CHUNK, 3)})
    writer.save(str(other), make_scope(run="1", task="8"))
    writer.delete(pruned.key)
    writer.close()  # that task ended long ago: no lease of its own any more
    age(storage, [blob_key(h) for h in blobs_of(pruned)], 3600)
    return src, blobs_of(pruned)


def collect(storage, **kwargs):
    """A collection with no grace period, as an operator's separate process runs it."""
    return CheckpointStore(storage, options()).gc(grace_seconds=0, **kwargs)


def assert_loads(store: CheckpointStore, manifest, src: Path, dest: Path) -> None:
    """The committed checkpoint loads, every blob verified, with exactly the saved files."""
    assert blobs_of(manifest) <= stored_blobs(store.storage)
    store.load(store.read(manifest.key), str(dest))
    assert snapshot(dest) == snapshot(src)


# --------------------------------------------------------------------- the interleavings
def test_gc_between_the_dedup_check_and_the_commit_keeps_what_the_save_named(storage, tmp_path):
    """GC runs just before the manifest is written: the blobs the save deduplicated against
    (old, unreferenced) are named by its lease, so GC keeps them."""
    src, old = stale(storage, tmp_path)
    store = CheckpointStore(storage, options())
    reports = []
    hook = storage.when(
        "put", lambda k: k.startswith("manifests/"), lambda: reports.append(collect(storage))
    )
    saved = store.save(str(src), make_scope(run="2"))
    assert hook["fired"] and saved.stats["bytes_uploaded"] == 0  # it did deduplicate
    assert reports[0].blobs_deleted == 0 and reports[0].blobs_leased == len(old)
    assert_loads(store, saved, src, tmp_path / "out")


def test_gc_right_after_the_dedup_check_makes_the_save_upload_again(storage, tmp_path):
    """GC deletes an old blob just after the save saw it stored, before the save named it: the
    save's check of gc/runs/ finds that run, verifies, and stores the blob again."""
    src, old = stale(storage, tmp_path)
    store = CheckpointStore(storage, options())
    reports = []
    # ingest: the local store's in-kernel path, which finds a chunk already stored.
    storage.when(
        ("exists", "ingest"),
        lambda k: k.rsplit("/", 1)[1] in old,
        lambda: reports.append(collect(storage)),
        after=True,
    )
    saved = store.save(str(src), make_scope(run="2"))
    assert reports[0].blobs_deleted == len(old)  # GC removed what the save had just seen
    assert saved.stats["bytes_uploaded"] > 0  # ... and the save stored it again
    assert_loads(store, saved, src, tmp_path / "out")


def test_gc_after_the_names_are_written_keeps_them(storage, tmp_path):
    """GC starts between the save's names-<n> put and its listing of gc/runs/: it reads the
    names and keeps the blobs."""
    src, old = stale(storage, tmp_path)
    store = CheckpointStore(storage, options())
    reports = []
    lists = []

    def on_list():
        lists.append(1)
        if len(lists) == 2:  # the first listing is the session's baseline
            reports.append(collect(storage))

    storage.when("list", lambda p: p == layout.GC_RUNS_PREFIX, on_list)
    storage.when("list", lambda p: p == layout.GC_RUNS_PREFIX, on_list)
    saved = store.save(str(src), make_scope(run="2"))
    assert len(reports) == 1 and reports[0].blobs_deleted == 0
    assert reports[0].blobs_leased == len(old)
    assert_loads(store, saved, src, tmp_path / "out")


def test_a_save_waits_for_a_collection_that_read_the_leases_before_its_names(storage, tmp_path):
    """GC has read the leases (the save's names were not there yet) and is about to delete; the
    save sees it sweeping, waits until it is done, then finds its blobs gone and stores them
    again.  Two threads, the real GC and the real save."""
    src, old = stale(storage, tmp_path)
    gc_read_leases = threading.Event()
    save_listed = threading.Event()
    lists = []

    def pause_gc():
        gc_read_leases.set()
        assert save_listed.wait(30)

    def on_list():
        lists.append(1)
        if len(lists) == 2:  # the save's check, after its names were written
            save_listed.set()

    storage.when("list", lambda p: p == layout.LEASES_PREFIX, pause_gc, after=True)
    reports: list = []
    worker = threading.Thread(target=lambda: reports.append(collect(storage)))
    worker.start()
    assert gc_read_leases.wait(30)
    for _ in range(2):  # the save's baseline listing, then its check
        storage.when("list", lambda p: p == layout.GC_RUNS_PREFIX, on_list, after=True)
    store = CheckpointStore(storage, options())
    saved = store.save(str(src), make_scope(run="2"))
    worker.join(30)
    assert save_listed.is_set() and reports[0].blobs_deleted >= len(old)
    assert saved.stats["bytes_uploaded"] > 0
    assert_loads(store, saved, src, tmp_path / "out")


def test_a_dead_collection_found_sweeping_is_not_waited_for_but_checked(storage, tmp_path):
    """A collection crashed mid-sweep long ago after deleting a blob the save had just seen:
    the save does not wait for it (its record is older than DEAD_SECONDS by the store's own
    clock), checks its blobs and stores the lost one again."""
    src, old = stale(storage, tmp_path)
    victim = min(old)

    def crashed_gc():
        storage.put_bytes(layout.gc_run_key("0000000000000-dead", ls.RUN_START), b"{}")
        storage.put_bytes(layout.gc_run_key("0000000000000-dead", ls.RUN_SWEEP), b"{}")
        age(
            storage,
            [layout.gc_run_key("0000000000000-dead", p) for p in (ls.RUN_START, ls.RUN_SWEEP)],
            3600,
        )
        storage.delete(blob_key(victim))

    storage.when(("exists", "ingest"), lambda k: k.endswith(victim), crashed_gc, after=True)
    store = CheckpointStore(storage, options())
    saved = store.save(str(src), make_scope(run="2"))
    assert_loads(store, saved, src, tmp_path / "out")
    # The next collection records that run as dead, so writers stop looking at it.
    collect(storage)
    assert ls.list_runs(storage)["0000000000000-dead"].phase == ls.RUN_DONE


def test_a_store_wiped_under_a_task_is_uploaded_again(storage, tmp_path):
    """blobs/ removed just before a commit of content the process saved before (and trusts):
    the pre-commit check notices, the save uploads everything again, the checkpoint loads."""
    store = CheckpointStore(storage, options())
    src = content_x(tmp_path)
    first = store.save(str(src), make_scope())

    def wipe():
        storage.delete_many([o.key for o in storage.list("blobs/")])

    storage.when("exists", lambda k: True, wipe)  # the save's first request, before its commit
    again = store.save(str(src), make_scope())
    assert again.stats["bytes_uploaded"] == first.stats["bytes_uploaded"] > 0
    assert_loads(store, again, src, tmp_path / "out")


def test_parallel_part_blobs_survive_gc_before_the_gang_commits(storage, tmp_path):
    """A @parallel rank has stored its shard and ended its session; GC runs before rank 0
    commits: the part keeps its blobs, and every rank's shard loads afterwards."""
    scope = make_scope(step="gang", task="9")
    ranks = [CheckpointStore(storage, options()) for _ in range(2)]
    shards = [
        write_tree(tmp_path / ("rank%d" % r), {"shard.bin": rand(2 * CHUNK, 10 + r)})
        for r in range(2)
    ]
    other = CheckpointStore(storage, options())
    other.save(str(shards[0]), make_scope(task="1"))  # the root is not empty
    other.close()
    out: dict = {}

    def rank1():
        out[1] = ranks[1].save_gang(
            str(shards[1]), scope, name="g", metadata={}, latest=True,
            participant=gang.Participant("node", 1, 2), number=0, timeout=60,
        )  # fmt: skip

    t = threading.Thread(target=rank1)
    t.start()
    deadline = time.monotonic() + 60
    while not storage.list(layout.PARTS_PREFIX) and time.monotonic() < deadline:
        time.sleep(0.01)
    while storage.list(layout.LEASES_PREFIX):  # its part is written: end its session, as when
        ranks[1].close()  # its process ends (once its save() has returned)
        time.sleep(0.01)
    report = collect(storage)
    assert report.blobs_deleted == 0 and report.parts == 1 and report.blobs_leased == 0
    out[0] = ranks[0].save_gang(
        str(shards[0]), scope, name="g", metadata={}, latest=True,
        participant=gang.Participant("node", 0, 2), number=0, timeout=60,
    )  # fmt: skip
    t.join(60)
    assert out[0].key == out[1].key
    dest = tmp_path / "out"
    ranks[0].load(ranks[0].read(out[0].key), str(dest))
    for r in range(2):
        assert snapshot(dest / ("rank-%d" % r)) == snapshot(shards[r])


# ---------------------------------------------------------------------------- cost and life
def test_an_unchanged_resave_adds_no_request_and_dedup_adds_two(tmp_path):
    """The steady state costs nothing: the first save of a session adds a start put and one
    listing; a re-save of unchanged content adds none; a save that relies on blobs it did not
    store adds one names put and one listing."""
    storage = HookedMemory()
    src, old = stale(storage, tmp_path)
    store = CheckpointStore(storage, options())
    mine = write_tree(tmp_path / "mine", {"w.bin": rand(2 * CHUNK, 7)})
    storage.calls.clear()
    store.save(str(mine), make_scope(run="2"))
    lease_calls = [c for c in storage.calls if "leases/" in c[1] or "gc/" in c[1]]
    assert [c[0] for c in lease_calls] == ["put", "list"]  # start, baseline
    storage.calls.clear()
    again = store.save(str(mine), make_scope(run="2"))
    assert again.stats["bytes_uploaded"] == 0
    assert [c[0] for c in storage.calls] == ["exists", "put"]  # one canary blob, the manifest
    storage.calls.clear()
    store.save(str(src), make_scope(run="2"))  # deduplicates against the pruned content
    lease_calls = [c for c in storage.calls if "leases/" in c[1] or "gc/" in c[1]]
    assert lease_calls == [("put", layout.lease_names_key(store._writer.lease.current.id, 0)),
                           ("list", layout.GC_RUNS_PREFIX)]  # fmt: skip
    names = json.loads(storage.get_bytes(lease_calls[0][1]))["blobs"]
    assert set(names) == old


def test_a_rotated_session_hands_its_blobs_to_the_next_by_naming_them(tmp_path):
    """After ttl/2 a save starts a new session (so one process never protects everything it
    uploaded for hours); blobs the old, still live, session uploaded are named by the new one
    without being checked again."""
    storage = HookedMemory()
    store = CheckpointStore(storage, options(), lease_seconds=4)
    src = content_x(tmp_path)
    first = store.save(str(src), make_scope())
    (old,) = ls.list_leases(storage)
    time.sleep(2.2)  # older than ttl/2 = 2 s, refreshed every second: still live
    storage.calls.clear()
    store.save(str(src), make_scope())
    new = [x for x in ls.list_leases(storage) if x.session != old.session]
    assert len(new) == 1 and new[0].names == blobs_of(first)
    assert [c for c in storage.calls if c[0] == "exists"] == [
        ("exists", blob_key(min(blobs_of(first))))  # the wiped-store canary only
    ]


def test_a_lapsed_session_is_replaced_and_what_it_protected_is_checked(tmp_path):
    """A process idle for longer than its lease (not refreshed for ttl/2) cannot know whether
    GC judged the lease expired and reclaimed what it protected: its next save starts a new
    session, names every blob it did not upload in it, checks them and uploads the missing."""
    storage = HookedMemory()
    store = CheckpointStore(storage, options(), lease_seconds=1)
    src = content_x(tmp_path)
    first = store.save(str(src), make_scope())
    (old,) = ls.list_leases(storage)
    time.sleep(2.5)  # refreshed while younger than the ttl, then lapsed and expired
    lost = max(blobs_of(first))  # as a collection that found the lease expired would
    storage.delete(blob_key(lost))
    again = store.save(str(src), make_scope())
    new = [x for x in ls.list_leases(storage) if x.session != old.session]
    assert len(new) == 1 and new[0].names >= blobs_of(first) - {lost}
    assert again.stats["bytes_uploaded"] > 0
    assert_loads(store, again, src, tmp_path / "out")


def test_close_removes_the_lease_and_a_later_save_starts_another(storage, tmp_path):
    """Closing a writer deletes its lease, and on a local store its session directory (a
    tier whose tasks end after its cleanup grew by one empty directory per task)."""
    store = CheckpointStore(storage, options())
    src = content_x(tmp_path)
    store.save(str(src), make_scope())
    (lease,) = ls.list_leases(storage)
    assert not lease.expired and lease.started is not None and lease.names == frozenset()
    store.close()
    assert storage.list(layout.LEASES_PREFIX) == []
    leases_dir = storage.local_path(layout.lease_key(lease.session, ls.START))
    if leases_dir is not None:  # a local store keeps no empty leases/<session>/ directory
        assert not os.path.exists(os.path.dirname(leases_dir))
    store.save(str(src), make_scope())
    assert [x.session for x in ls.list_leases(storage)] != [lease.session]


def test_a_forked_child_has_its_own_session(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    store = CheckpointStore(storage, options())
    store.save(str(content_x(tmp_path)), make_scope())
    (parent,) = ls.list_leases(storage)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            src = write_tree(tmp_path / "child", {"c.bin": rand(CHUNK, 9)})
            store.save(str(src), make_scope(task="2"))
            code = 0 if len(ls.list_leases(storage)) == 2 else 3
            store.close()
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    # The child removed its own lease, not its parent's.
    assert [x.session for x in ls.list_leases(storage)] == [parent.session]


def _saver_script(signal_name: str) -> str:
    """A saver process whose own signal ``signal_name`` hits it just before its manifest put."""
    return textwrap.dedent(
        """
        import json, os, signal, sys
        import metaflow  # noqa: F401
        from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
        from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (
            CheckpointStore,
        )
        from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (
            TransferOptions,
        )
        from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
            LocalStorage,
        )

        class Signalled(LocalStorage):
            def _put_bytes(self, key, data):
                if key.startswith("manifests/"):
                    os.kill(os.getpid(), signal.%s)
                super()._put_bytes(key, data)

        opts = TransferOptions(chunk_size=65536, small_size=16384, workers=4)
        ttl = float(sys.argv[4]) if len(sys.argv) > 4 else 1
        store = CheckpointStore(Signalled(sys.argv[1]), opts, lease_seconds=ttl)
        m = store.save(sys.argv[2], Scope.from_dict(json.loads(sys.argv[3])))
        print(m.key)
        """
        % signal_name
    )


#: Killed between upload and commit.
CRASHING_SAVER = _saver_script("SIGKILL")


def test_a_killed_savers_orphans_are_kept_while_its_lease_lives_then_reclaimed(tmp_path):
    root = tmp_path / "store"
    storage = LocalStorage(str(root))
    keep = CheckpointStore(storage, options())
    keep.save(str(write_tree(tmp_path / "k", {"k.bin": rand(CHUNK, 1)})), make_scope())
    keep.close()
    src = write_tree(tmp_path / "big", {"w.bin": rand(4 * CHUNK, 2), "s.txt": b"small"})
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVER, str(root), str(src),
         json.dumps(make_scope(task="2").to_dict())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    (lease,) = ls.list_leases(storage)
    orphans = stored_blobs(storage) - blobs_of(keep.read(keep.headers("manifests/")[0].key))
    assert len(orphans) == 5
    # While its lease could still be live (judged with a long lifetime here), GC keeps them.
    report = CheckpointStore(storage, options()).gc(grace_seconds=0, lease_ttl=3600)
    assert report.blobs_deleted == 0 and report.blobs_leased == 5
    # Its lease lasts 1 s: once that has passed twice over, GC reclaims the orphans and the
    # lease itself.
    while time.time() < lease.refreshed + 2.2:
        time.sleep(0.1)
    report = collect(storage)
    assert report.blobs_deleted == 5 and report.leases_deleted == 1
    assert not orphans & stored_blobs(storage) and storage.list(layout.LEASES_PREFIX) == []


# ---------------------------------------------------------------------------- GC's own rules
@pytest.mark.parametrize("grace", [math.nan, math.inf, -1.0, None])
def test_gc_refuses_a_grace_period_that_is_not_a_finite_number(store, tmp_path, grace):
    store.save(str(content_x(tmp_path)), make_scope())
    with pytest.raises(CheckpointConfigError, match="finite number of seconds >= 0, not"):
        store.gc(grace_seconds=grace)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_cli_grace_hours_must_be_finite(tmp_path, value):
    """`checkpoint gc --grace-hours nan` used to disable the age check and delete everything
    unreferenced; it is a usage error now, and nothing is deleted."""
    root = tmp_path / "store"
    store = CheckpointStore(LocalStorage(str(root)), options())
    store.save(str(content_x(tmp_path)), make_scope())
    store.close()
    orphan = blob_key("ab" * 32)
    store.storage.put_bytes(orphan, b"unreferenced")
    env = dict(
        os.environ,
        USER="tester",
        METAFLOW_HOME=str(tmp_path / "home"),
        METAFLOW_DEFAULT_METADATA="local",
    )
    metaflow = Path(sys.executable).parent / "metaflow"
    proc = subprocess.run(
        [str(metaflow), "checkpoint", "gc", "--grace-hours", value, "--root", str(root)],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "Invalid value for '--grace-hours': '%s' is not a finite number of hours >= 0" % (value)
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert store.storage.exists(orphan)


def test_only_one_collection_runs_at_a_time(storage, tmp_path):
    stale(storage, tmp_path)
    inside = threading.Event()
    release = threading.Event()

    def pause():
        inside.set()
        assert release.wait(30)

    storage.when("list", lambda p: p == layout.LEASES_PREFIX, pause)
    first: list = []
    worker = threading.Thread(target=lambda: first.append(collect(storage)))
    worker.start()
    assert inside.wait(30)
    try:
        with pytest.raises(CheckpointConfigError, match="Another garbage collection is running"):
            collect(storage)
    finally:
        release.set()
        worker.join(30)
    assert first[0].blobs_deleted > 0
    runs = ls.list_runs(storage)
    assert len(runs) == 2 and all(r.phase == ls.RUN_DONE for r in runs.values())


def test_gc_stops_deleting_once_its_heartbeat_is_stale(storage, tmp_path, monkeypatch):
    """If its record cannot be rewritten, writers will soon consider the run dead and stop
    waiting for it: it must not delete anything after that."""
    _, old = stale(storage, tmp_path)
    monkeypatch.setattr(ls, "STALE_SECONDS", 0.2)

    def unreachable():
        # From now on every write of the run record fails.
        original = storage._put_bytes

        def put(key, data):
            if key.startswith(layout.GC_RUNS_PREFIX):
                raise OSError(5, "I/O error")
            original(key, data)

        storage._put_bytes = put
        time.sleep(0.3)

    storage.when("list", lambda p: p == layout.LEASES_PREFIX, unreachable, after=True)
    with pytest.raises(StorageError, match="stopped deleting"):
        collect(storage)
    assert old <= stored_blobs(storage)


def test_gc_stops_on_an_unreadable_manifest_part_or_lease_names(storage, tmp_path):
    src, old = stale(storage, tmp_path)
    good = CheckpointStore(storage, options()).headers("manifests/")[0].key
    damaged = re.sub(r"-[0-9a-f]{16}-", "-%s-" % ("0" * 16), good, count=1)
    cases = [
        (damaged, b"{truncated", "metaflow checkpoint delete %s" % damaged),
        ("parts/ns/F/s/_/1/2/abc/rank-0.json", b"[]", "unfinished @parallel save"),
        (layout.lease_names_key("live", 0), b"{", "lease object leases/live/names-000000"),
    ]
    for key, data, message in cases:
        storage.put_bytes(key, data)
        if key.startswith(layout.LEASES_PREFIX):
            storage.put_bytes(layout.lease_key("live", ls.START), b'{"ttl": 600}')
        with pytest.raises(ManifestError, match="stopped before deleting anything") as exc:
            collect(storage)
        assert message in exc.value.message
        assert old <= stored_blobs(storage)
        storage.delete(key)
    storage.delete(layout.lease_key("live", ls.START))
    assert collect(storage).blobs_deleted == len(old)


def test_a_lease_that_cannot_be_dated_keeps_everything_while_it_lives(storage, tmp_path):
    """A lease with no start object (a refresh that landed after its session ended) cannot tell
    which blobs it protects: GC keeps every candidate until it expires."""
    _, old = stale(storage, tmp_path)
    storage.put_bytes(layout.lease_key("orphan", ls.ALIVE), b'{"ttl": 600}')
    report = collect(storage)
    assert report.blobs_deleted == 0 and report.blobs_leased == len(old)
    report = collect(storage, now=time.time() + 2 * ls.MAX_TTL_SECONDS + 60)
    assert report.blobs_deleted == len(old) and report.leases_deleted == 1


def test_list_leases_judges_expiry_names_and_damage(storage):
    storage.put_bytes(layout.lease_key("a", ls.START), b'{"ttl": 60}')
    storage.put_bytes(layout.lease_names_key("a", 0), json.dumps({"blobs": ["cd" * 32]}).encode())
    storage.put_bytes(layout.lease_key("b", ls.START), b"not json")
    storage.put_bytes(layout.lease_key("b", "future-object"), b"")
    a, b = ls.list_leases(storage)
    assert (a.session, a.names, a.expired, a.ttl) == ("a", frozenset({"cd" * 32}), False, 60.0)
    assert a.keys == (layout.lease_names_key("a", 0), layout.lease_key("a", ls.START))
    assert b.unreadable == (layout.lease_key("b", ls.START),) and b.ttl == ls.MAX_TTL_SECONDS
    assert b.protects_everything and b.protects("ef" * 32, 0.0)
    assert a.protects("cd" * 32, 0.0) and not a.protects("ef" * 32, a.started - 10)
    later = ls.list_leases(storage, now=time.time() + 120)
    assert [x.expired for x in later] == [True, False]
    assert ls.list_leases(storage, ttl_seconds=1, now=time.time() + 2)[1].expired


# ----------------------------------------------- found by the adversarial pass (issue 11)
#: Frozen (a paused container or VM) between its settle and its commit.
STOPPED_SAVER = _saver_script("SIGSTOP")


def test_a_save_frozen_past_its_lease_before_the_commit_never_returns_a_torn_checkpoint(
    tmp_path,
):
    """SIGSTOP (a frozen container, a paused VM) between the settle and the manifest put, for
    longer than the lease: GC may then delete the old blob the save deduplicated against.  The
    save must check after its commit and restore what is gone before it returns."""
    root = tmp_path / "store"
    storage = LocalStorage(str(root))
    src, old = stale(storage, tmp_path)
    ttl = 1.0
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_SAVER, str(root), str(src),
         json.dumps(make_scope(run="2").to_dict()), str(ttl)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with open("/proc/%d/stat" % proc.pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the saver never reached its commit")
        time.sleep(2 * ttl + 0.5)  # its lease has expired for GC
        assert collect(storage).blobs_deleted >= len(old)  # the old blobs went
    finally:
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    store = CheckpointStore(storage, options())
    assert_loads(store, store.read(out.strip().splitlines()[-1]), src, tmp_path / "out")


def test_a_run_record_dated_in_the_future_does_not_block_gc_or_savers(
    storage, tmp_path, monkeypatch
):
    """A killed collection's record dated an hour ahead (its host's clock ran ahead on a shared
    filesystem): GC judges it by change, finds it dead and records so; savers stop waiting."""
    monkeypatch.setattr(ls, "DEAD_SECONDS", 1.0)
    monkeypatch.setattr(ls, "HEARTBEAT_SECONDS", 0.2)
    src, old = stale(storage, tmp_path)
    key = layout.gc_run_key("9999999999999-deadbeef", ls.RUN_SWEEP)
    storage.put_bytes(key, b"{}")
    age(storage, [key], -3600)
    report = collect(storage)
    assert report.blobs_deleted >= len(old)
    assert ls.list_runs(storage)["9999999999999-deadbeef"].phase == ls.RUN_DONE
    # Writers no longer see a run to wait for, and a save relying on stored content commits.
    assert WriterLease._flagged(ls.list_runs(storage), {})[0] == []
    m = CheckpointStore(storage, options()).save(str(src), make_scope(run="3"))
    assert_loads(CheckpointStore(storage, options()), m, src, tmp_path / "out")


@pytest.mark.parametrize(
    "name",
    [
        # A later key grammar (an unknown writer token), and an unknown format altogether.
        "0001733000000000-0-000001-Lx9-abcdef-mfchckpt.json",
        "checkpoint-v9.json",
    ],
)
def test_gc_stops_at_a_manifest_it_cannot_parse_and_deletes_nothing(storage, tmp_path, name):
    """A newer release's commit under ``manifests/`` references blobs this release cannot see:
    collecting beside it would delete them, so the collection stops first, naming it."""
    _, pruned_blobs = stale(storage, tmp_path)  # something a collection would delete
    task = layout.task_prefix("user:a", "F", "s", "_", "1", "9")
    storage.put_bytes(task + name, b"{}")
    with pytest.raises(ManifestError) as raised:
        collect(storage)
    assert name in raised.value.message and "newer release" in raised.value.message
    assert pruned_blobs <= stored_blobs(storage)  # nothing was deleted
    storage.delete_many([task + name])
    assert collect(storage).blobs_deleted == len(pruned_blobs)
