"""Stress: garbage collection in a loop (no grace period) beside hundreds of saves in several
processes that keep re-using old content, on a local store and on S3 (moto).

Each saver process saves checkpoints made of a few shared components (a frozen-layers file
split into chunks, a small tokenizer-like file) plus a file of its own, and prunes its task to
the newest two after every save, so components keep becoming unreferenced and then reused by
the next save, in this process or another one.  Savers run in generations of short-lived
processes: a process that ends takes its lease with it, so what it uploaded becomes collectable.
At the end every committed checkpoint still stored loads with every blob verified, each saver's
newest two are among them, and GC did delete data (the test is not vacuous).
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import storage_for_url
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import build
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError

CHUNK = 64 * 1024
OPTS = dict(chunk_size=CHUNK, small_size=16 * 1024, workers=4)
COMPONENTS = 8
PER_SAVE = 3


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _files(meta: dict) -> dict[str, bytes]:
    """The files of the checkpoint described by ``meta`` (saver, save number, components)."""
    # Its own file is uploaded after the components were found stored (paths sort after them):
    # the window in which a collection could remove a component the save relies on.
    out = {"own.bin": _rand(meta["own"] * CHUNK, 1_000_000 + 1000 * meta["w"] + meta["i"])}
    for c in meta["components"]:
        out["c%d/frozen.bin" % c] = _rand(2 * CHUNK + 37 * c, c)  # 3 chunks
        out["c%d/tokenizer.txt" % c] = _rand(3000 + c, 100 + c)  # packed
    return out


def _scope(w: int) -> Scope:
    return Scope("user:stress", "StressFlow", "train", "_", "1", str(w), 0)


def _store(url: str) -> CheckpointStore:
    return CheckpointStore(storage_for_url(url), TransferOptions(**OPTS))


def _saver(url: str, w: int, saves: int, own: int, out) -> None:
    work = Path(tempfile.mkdtemp(prefix="mfckpt-stress-"))
    try:
        import metaflow  # noqa: F401 - as in a task: the extension loads first

        store = _store(url)
        rng = random.Random(w)
        keys = []
        for i in range(saves):
            components = sorted(rng.sample(range(COMPONENTS), PER_SAVE))
            meta = {"w": w, "i": i, "own": own, "components": components}
            src = work / ("s%d" % i)
            for rel, data in _files(meta).items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(data)
            keys.append(store.save(str(src), _scope(w), metadata=meta).key)
            shutil.rmtree(src)
            headers = store.headers(_scope(w).task_prefix())
            store.prune(headers, build(keep_last=2), group_of=lambda h: "g")
        out.put(("saver", w, keys))
    except BaseException:  # noqa: BLE001 - reported to the test
        out.put(("error", w, traceback.format_exc()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Returning ends the process: its lease is removed at exit (atexit).


def _collector(url: str, pause: float, stop, out) -> None:
    try:
        import metaflow  # noqa: F401

        store = _store(url)
        deleted = []
        while not stop.is_set():
            try:
                deleted.append(store.gc(grace_seconds=0).blobs_deleted)
            except CheckpointConfigError as exc:
                if "holds no checkpoint manifest" not in exc.message:
                    raise
            time.sleep(pause)
        out.put(("gc", -1, deleted))
    except BaseException:  # noqa: BLE001 - reported to the test
        out.put(("error", -1, traceback.format_exc()))


def _run(url: str, generations: int, savers: int, saves: int, own: int, pause: float):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    gc_proc = ctx.Process(target=_collector, args=(url, pause, stop, out))
    gc_proc.start()
    committed: dict = {}
    errors: list = []
    deleted: list = []

    def drain(block: bool) -> None:
        while True:
            try:
                kind, who, payload = out.get(timeout=120 if block else 0.01)
            except queue.Empty:
                return
            if kind == "error":
                errors.append(payload)
            elif kind == "gc":
                deleted.extend(payload)
            else:
                committed[who] = payload
            block = False

    try:
        for g in range(generations):
            procs = [
                ctx.Process(target=_saver, args=(url, g * savers + s, saves, own, out))
                for s in range(savers)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join(300)
                assert p.exitcode == 0, "saver exited with %s" % p.exitcode
            drain(False)
    finally:
        stop.set()
        gc_proc.join(300)
        drain(True)
    assert not errors, "\n".join(errors)
    return committed, deleted


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_gc_in_a_loop_beside_hundreds_of_saves_never_breaks_a_checkpoint(
    backend, tmp_path, request
):
    if backend == "s3":
        bucket = request.getfixturevalue("s3_env")["new_bucket"]()
        # moto is slow and shares the CPUs: fewer, smaller saves, and a GC that pauses a
        # little between runs (its window is wide anyway: every request is a round trip).
        # Two generations still hand a dead generation's blobs to the next one; the local
        # case runs three generations of larger saves.
        url, generations, savers, saves, own, pause = "s3://%s/root" % bucket, 2, 4, 10, 2, 0.05
    else:
        url, generations, savers, saves, own, pause = str(tmp_path / "store"), 3, 4, 20, 16, 0.0
    committed, deleted = _run(url, generations, savers, saves, own, pause)

    assert sum(len(keys) for keys in committed.values()) == generations * savers * saves
    assert sum(deleted) > 0, "GC never deleted anything: the test would prove nothing"
    store = _store(url)
    report = store.gc(grace_seconds=0)  # once more, with every saver gone
    stored = {o.key.rsplit("/", 1)[1] for o in store.storage.list("blobs/")}
    headers = store.headers("manifests/")
    keys = {h.key for h in headers}
    for w, saved in committed.items():  # retention kept each saver's newest two
        assert set(saved[-2:]) <= keys, w
    assert len(headers) == 2 * len(committed)
    for h in headers:  # no committed checkpoint misses a blob, and each loads verified
        m = store.read(h.key)
        needed = {c.blob for f in m.files for c in f.chunks}
        assert needed <= stored, "%s misses %s" % (h.key, sorted(needed - stored)[:3])
        dest = tmp_path / "out" / m.id
        store.load(m, str(dest))
        got = {
            p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
        }
        assert got == _files(m.metadata), h.key
    # Only what the surviving checkpoints reference is left (the final GC had no lease to
    # respect), so the blobs of every pruned checkpoint were reclaimed at some point.
    referenced = {c.blob for h in headers for f in store.read(h.key).files for c in f.chunks}
    assert stored == referenced and report.leases_live == 0
    assert not store.storage.list("leases/")
    assert all(store.storage.exists(blob_key(b)) for b in referenced)
