"""Cost curves: how time and memory grow with checkpoint size, count and concurrent writers.

    python benchmarks/bench_curves.py --quick              # small sizes, < 3 minutes
    python benchmarks/bench_curves.py --json curves.json   # all curves (hours; S3 list/gc ~1 h)
    python benchmarks/bench_curves.py --only list,gc       # some curves only
    python benchmarks/bench_curves.py --from-json a.json,b.json  # tables and PNGs of saved runs
                                                       # (merged into one with --json FILE)

Four curves, each printed as a table with its fitted growth rate (the slope of log(cost)
against log(size): 1 is linear, 0 flat; a slope above ``SUPERLINEAR`` is flagged) and plotted
to ``--png-dir`` (matplotlib, the ``bench`` extra):

* ``size``: save and load time and peak RSS of one checkpoint of 1, 4, 16 GiB on a local store
  and 1, 4 GiB on S3 (moto on 127.0.0.1, its own process).  Each save and each load runs in a
  fresh Python process through the store API (``CheckpointStore.save`` / ``load``, what
  ``current.checkpoint`` calls; no flow: a task's start-up would only add a constant), so its
  peak RSS above the interpreter's baseline is that operation's alone.
* ``list``: ``Checkpoint(root=...).list()`` and ``best(metric=...)`` over 1,000, 10,000 and
  100,000 checkpoints of one series (local and S3).  The checkpoints are real saves through
  ``CheckpointStore.save`` (one small unique file each, so one blob each), made once and grown
  from one size to the next; on S3 they are saved into a local store whose objects are then
  copied into the bucket (:func:`_copy_to_s3`: moto makes only 15-60 saves a second), and
  what is measured is the real S3 listing and GC.  ``cold``: a new client, with the step's
  summary index removed (every manifest is read); ``warm``: a new client, index present;
  ``hot``: the same client again.
* ``gc``: ``CheckpointStore.gc`` over the same stores (as many blobs as checkpoints, all
  referenced, nothing to delete: the mark and sweep work itself), and once more after half
  the manifests are deleted at the largest size (the deletes included).
* ``concurrency``: 1, 8 and 32 tasks of a real foreach flow (``bench_curves_flow.py`` run
  with ``--datastore=s3 --max-workers N``) each saving 64 MiB into the one S3 store:
  aggregate throughput (bytes over the span from the first save's start to the last one's
  end), failed tasks, and the non-2xx answers moto logged (throttles, retries).

``--quick`` (32 MiB to 512 MiB, 100 to 1,000 checkpoints, 1 and 2 tasks of 8 MiB) checks that
everything runs; its sizes are below the transfer pipeline's buffer bound, so peak RSS still
rises with size there and may be flagged: read memory from the full sizes.

This machine has 2 cores shared with other work: single figures are noisy (sizes are
interleaved nowhere, each point is measured once unless ``--repeat``); the growth rates are
what to read.  Nothing asserts: the exit status is non-zero only when something fails to run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _benchutil import MiB, PeakRSS  # noqa: E402
from bench import S3_ENV, MotoServer, flow_environment, fmt_bytes, log, s3_client  # noqa: E402

GiB = 1 << 30
#: A fitted log-log slope above this is flagged as worse than linear (noise allows a little).
SUPERLINEAR = 1.15
#: Bytes per data file of the size curve (a checkpoint of 4 GiB is four 1 GiB files).
FILE_BYTES = GiB
_PKG = "metaflow_extensions.checkpointing.plugins.checkpointing"


# ----------------------------------------------------------------------------------- fitting
def slope(xs: list, ys: list) -> float:
    """Least-squares slope of log(y) on log(x): the growth exponent (1 linear, 0 flat)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else float("nan")


def verdict(s: float, flat: bool = False) -> str:
    if s != s:  # nan
        return "n/a"
    if flat:
        return "flat" if s < 0.3 else ("sublinear" if s < 0.85 else "GROWS")
    return "WORSE THAN LINEAR" if s > SUPERLINEAR else ("linear" if s > 0.85 else "sublinear")


# ----------------------------------------------------------------------------------- data
def make_data(root: Path, nbytes: int) -> None:
    """``nbytes`` of incompressible, never-repeating bytes in files of ``FILE_BYTES``.

    One 64 MiB random block, each MiB of it stamped with a running counter: every chunk's
    content is new (nothing deduplicates) at a fraction of ``os.urandom``'s cost.
    """
    root.mkdir(parents=True)
    block = bytearray(os.urandom(64 * MiB))
    counter = 0
    index = 0
    left = nbytes
    while left > 0:
        size = min(FILE_BYTES, left)
        with open(root / ("part-%03d.bin" % index), "wb") as f:
            todo = size
            while todo > 0:
                n = min(len(block), todo)
                for off in range(0, n, MiB):
                    block[off : off + 16] = counter.to_bytes(16, "little")
                    counter += 1
                f.write(memoryview(block)[:n])
                todo -= n
        left -= size
        index += 1


# ----------------------------------------------------------------------------------- workers
def _worker(spec: dict) -> dict:
    """One save or load in this (fresh) process: seconds and peak RSS above the baseline."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope

    if spec["op"] == "listgc":
        return _list_gc(spec)
    store = store_for_url(spec["url"])
    if spec["op"] == "save":
        scope = Scope("user:bench", "CurveFlow", "train", "_", "1", "1", 0)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            manifest = store.save(spec["src"], scope, name="size")
            seconds = time.perf_counter() - t0
        store.close()
        return dict(rss.to_json(), seconds=seconds, key=manifest.key, bytes=manifest.size)
    manifest = store.read(spec["key"])
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        store.load(manifest, spec["dest"])
        seconds = time.perf_counter() - t0
    return dict(rss.to_json(), seconds=seconds, bytes=manifest.size)


def run_worker(spec: dict, env: dict) -> dict:
    # stderr passes through: the worker's progress lines and, if it fails, its traceback.
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError("worker %s failed (exit %d)" % (spec["op"], proc.returncode))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _new_bucket(moto: MotoServer) -> str:
    """A new bucket on ``moto``, named for this run."""
    bucket = "curve-%s" % uuid.uuid4().hex[:8]
    s3_client(moto.endpoint, 4).create_bucket(Bucket=bucket)
    return bucket


def _store(backend: str, moto_log: Path, local: Path) -> tuple:
    """``(moto server or None, environment, store URL)`` for one curve: a new bucket on a new
    moto server for ``"s3"`` (the caller stops it), else the local directory ``local``."""
    env = dict(os.environ)
    if backend != "s3":
        return None, env, str(local)
    moto = MotoServer(moto_log)
    try:
        bucket = _new_bucket(moto)
    except BaseException:
        moto.stop()  # the caller never gets it to stop
        raise
    env.update(S3_ENV, METAFLOW_S3_ENDPOINT_URL=moto.endpoint)
    return moto, env, "s3://%s/mf.checkpointing" % bucket


# ----------------------------------------------------------------------------------- size
def drop_caches() -> bool:
    """``sync``, then empty the page cache where this process may (root, Linux): the next
    operation reads from disk.  False (only synced) where it may not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def _cp_seconds(src: Path, dst: Path) -> float:
    """Wall time of ``cp -r src dst`` (``dst`` removed after)."""
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(dst)
    return seconds


def size_curve(work: Path, sizes_gib: list, backend: str, moto_log: Path) -> list:
    """One save and one load per size.  Locally, each starts with an empty page cache
    (:func:`drop_caches`) and is followed by its raw baseline, ``cp -r`` of the same bytes from
    an empty page cache too: of the source directory (save), of the store's directory (load):
    at 16 GiB source, store and destination do not all fit in this machine's memory, so the
    disk's speed, not the code, sets the slope; the baseline shows it."""
    rows = []
    for gib in sizes_gib:
        nbytes = int(gib * GiB)
        moto = None
        try:
            moto, env, url = _store(backend, moto_log, work / "store")
            src, dest = work / "src", work / "dest"
            make_data(src, nbytes)
            cold = drop_caches()
            save = run_worker({"op": "save", "url": url, "src": str(src)}, env)
            row = {"backend": backend, "bytes": nbytes, "save": save, "cold": cold}
            if backend == "local":
                drop_caches()
                row["cp_save"] = _cp_seconds(src, work / "cp")
            shutil.rmtree(src)
            drop_caches()
            load = run_worker(
                {"op": "load", "url": url, "key": save["key"], "dest": str(dest)}, env
            )
            if load["bytes"] != nbytes:
                raise RuntimeError("load of %s GiB returned %d bytes" % (gib, load["bytes"]))
            row["load"] = load
            if backend == "local":
                drop_caches()
                row["cp_load"] = _cp_seconds(work / "store", work / "cp")
            rows.append(row)
            log(
                "size %s %s: save %.1f s (%s RSS), load %.1f s (%s RSS)%s"
                % (
                    backend,
                    fmt_bytes(nbytes),
                    save["seconds"],
                    fmt_bytes(save["rss_extra"]),
                    load["seconds"],
                    fmt_bytes(load["rss_extra"]),
                    "; cp -r %.1f s / %.1f s" % (row["cp_save"], row["cp_load"])
                    if "cp_save" in row
                    else "",
                )
            )
        finally:
            for p in ("src", "dest", "store", "cp"):
                shutil.rmtree(work / p, ignore_errors=True)
            if moto is not None:
                moto.stop()
    return rows


# ----------------------------------------------------------------------------------- list, gc
#: Processes making the list/gc curves' checkpoints (on this shared machine more processes
#: mostly means a larger share of the CPUs; each is a writer with its own lease).
MAKERS = 4


def _make_range(url: str, work: str, lo: int, hi: int) -> None:
    """Save checkpoints ``lo`` .. ``hi - 1`` of the series: one unique 64-byte file each."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope

    store = store_for_url(url)
    scope = library_scope("curve")
    src = Path(work) / ("tiny-%d" % lo)
    src.mkdir(exist_ok=True)
    base = 1_700_000_000_000
    for i in range(lo, hi):
        (src / "w.bin").write_bytes(b"%064d" % i)
        store.save(
            str(src),
            scope,
            name="curve",
            metadata={"loss": ((i * 7919) % 100_003) / 100_003.0, "step": i},
            created_ms=base + i,
        )
    store.close()  # its lease would keep the blobs from the gc curve's collection
    shutil.rmtree(src, ignore_errors=True)


def _grow(url: str, work: Path, have: int, want: int) -> None:
    """Save checkpoints ``have`` .. ``want - 1`` with :data:`MAKERS` processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    step = -(-(want - have) // MAKERS)
    ranges = [(lo, min(lo + step, want)) for lo in range(have, want, step)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(ranges), mp_context=ctx) as pool:
        for fut in [pool.submit(_make_range, url, str(work), lo, hi) for lo, hi in ranges]:
            fut.result()


#: Threads copying a locally built store into the S3 bucket (see :func:`_copy_to_s3`).
COPY_THREADS = 24
#: Names the local backend gives its temporary files (never objects: not copied).
_TMP_PREFIX = ".mfckpt-tmp-"


def _copy_to_s3(local_root: Path, url: str, copied: dict) -> tuple:
    """Make the S3 store ``url`` hold what the local store at ``local_root`` holds.

    Every regular file under ``local_root`` is an object whose key is its path relative to
    the root (the local backend's layout; the S3 backend puts the same key under the URL's
    prefix).  Files new or changed since the last call (``copied``: key -> (mtime, size),
    updated here) are put on :data:`COPY_THREADS` threads; keys copied before and gone
    locally since are deleted.  Returns ``(objects put, objects deleted)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    bucket, _, prefix = url[len("s3://") :].partition("/")
    root_key = prefix.strip("/") + "/" if prefix.strip("/") else ""
    client = s3_client(os.environ["METAFLOW_S3_ENDPOINT_URL"], COPY_THREADS)
    seen, todo = set(), []
    for directory, _dirs, files in os.walk(local_root):
        for name in files:
            if name.startswith(_TMP_PREFIX):
                continue
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            key = Path(path).relative_to(local_root).as_posix()
            seen.add(key)
            sig = (st.st_mtime_ns, st.st_size)
            if copied.get(key) != sig:
                todo.append((key, path, sig))

    def put(item: tuple) -> None:
        key, path, sig = item
        with open(path, "rb") as f:
            body = f.read()
        if len(body) != sig[1]:
            raise RuntimeError("%s changed while being copied" % path)
        client.put_object(Bucket=bucket, Key=root_key + key, Body=body)
        copied[key] = sig

    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for _ in pool.map(put, todo):
            pass
    gone = sorted(k for k in copied if k not in seen)
    for lo in range(0, len(gone), 1000):
        batch = gone[lo : lo + 1000]
        answer = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": root_key + k} for k in batch]}
        )
        if answer.get("Errors"):
            raise RuntimeError("deleting copied objects failed: %s" % answer["Errors"][:3])
        for k in batch:
            del copied[k]
    return len(todo), len(gone)


def _timed(fn) -> tuple:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def list_gc_curve(work: Path, counts: list, backend: str, moto_log: Path, curves: set) -> dict:
    """The list/best and gc curves of one backend, measured in a fresh process (the S3
    endpoint is read when Metaflow's configuration is imported)."""
    moto = None
    try:
        moto, env, url = _store(backend, moto_log, work / "liststore")
        spec = {
            "op": "listgc",
            "url": url,
            "backend": backend,
            "work": str(work),
            "counts": counts,
            "curves": sorted(curves),
        }
        out = run_worker(spec, env)
        if moto is not None:
            counts = _requests_between(moto_log.read_text(errors="replace"))
            for row in out["list"]:
                for op in (
                    "raw_list",
                    "cold_list",
                    "cold_best",
                    "warm_list",
                    "warm_best",
                    "hot_list",
                    "hot_best",
                ):
                    row[op + "_requests"] = counts.get("%d-%s" % (row["count"], op))
            for row in out["gc"]:
                if not row["deleted"]:
                    row["requests"] = counts.get("%d-gc" % row["blobs"])
        return out
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(work / "liststore", ignore_errors=True)
        shutil.rmtree(work / "s3build", ignore_errors=True)


#: Where :func:`_list_gc`'s marks read (nothing is there).
MARK = "bench-marks/"


def _requests_between(moto_log: str) -> dict:
    """Requests moto logged after each mark, up to the next one, by the mark's label."""
    counts: dict = {}
    label = None
    for line in moto_log.splitlines():
        if MARK in line:
            label = line.split(MARK, 1)[1].split(" ", 1)[0]
            counts.setdefault(label, 0)
        elif label is not None and '"' in line:  # every other line is a request
            counts[label] += 1
    return counts


def _raw_list(url: str) -> int:
    """The baseline of the list curve: the bare listing of every manifest key, with no
    checkpoint code (boto3's ``list_objects_v2`` paginator on S3, ``os.walk`` locally).
    Returns the number of keys."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
        MANIFESTS_PREFIX,
    )

    if not url.startswith("s3://"):
        return sum(len(files) for _d, _s, files in os.walk(os.path.join(url, MANIFESTS_PREFIX)))
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = s3_client(os.environ["METAFLOW_S3_ENDPOINT_URL"], 4)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.strip("/") + "/" + MANIFESTS_PREFIX
    )
    return sum(page.get("KeyCount", 0) for page in pages)


def _list_gc(spec: dict) -> dict:
    """:func:`list_gc_curve`'s work, in the worker process."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.client.checkpoint import (
        Checkpoint,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
        MANIFESTS_PREFIX,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.summary import (
        step_index_key,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageNotFound

    url, backend, work, curves = spec["url"], spec["backend"], Path(spec["work"]), spec["curves"]
    out: dict = {"list": [], "gc": []}
    store = store_for_url(url)

    def mark(label: str) -> None:
        """A read of a missing object, found in moto's log: the requests between two marks
        are one operation's (see :func:`_requests_between`)."""
        try:
            store.storage.get_bytes(MARK + label)
        except StorageNotFound:
            pass

    scope = library_scope("curve")
    # S3: the checkpoints are real saves into a local store, whose objects are then copied
    # into the bucket (moto makes only 15-60 saves a second; see the README).
    build = work / "s3build" if backend == "s3" else None
    copied: dict = {}
    have = 0
    for n in spec["counts"]:
        made = have
        t_make, _ = _timed(lambda n=n, have=have: _grow(str(build or url), work, have, n))
        have = n
        log(
            "list %s: %d checkpoints made%s (%.2f ms each)"
            % (backend, n, " locally" if build else "", t_make / max(n - made, 1) * 1e3)
        )
        if build is not None:
            t_copy, (put, gone) = _timed(lambda: _copy_to_s3(build, url, copied))
            out.setdefault("build", []).append(
                {
                    "backend": backend,
                    "count": n,
                    "make_seconds": t_make,
                    "copy_seconds": t_copy,
                    "objects_put": put,
                    "objects_deleted": gone,
                    "objects": len(copied),
                }
            )
            log(
                "list %s: %d objects copied to S3 in %.1f s (%.0f/s), %d deleted, %d in all"
                % (backend, put, t_copy, put / t_copy if t_copy else 0, gone, len(copied))
            )
            if "list" not in curves:  # the list curve checks its own counts
                listed = len(Checkpoint(root=url).list())
                if listed != n:
                    raise RuntimeError(
                        "S3 listing after the copy found %d of %d checkpoints" % (listed, n)
                    )
        if "list" in curves:
            store.storage.delete(step_index_key(scope.step_prefix()))
            row = {"backend": backend, "count": n}
            mark("%d-raw_list" % n)
            row["raw_list"], raw_keys = _timed(lambda: _raw_list(url))
            if raw_keys != n:
                raise RuntimeError("the raw listing found %d of %d manifests" % (raw_keys, n))
            for label in ("cold", "warm"):
                client = Checkpoint(root=url)
                mark("%d-%s_list" % (n, label))
                row[label + "_list"], refs = _timed(client.list)
                mark("%d-%s_best" % (n, label))
                row[label + "_best"], best = _timed(lambda c=client: c.best(metric="loss"))
                if label == "warm":
                    mark("%d-hot_list" % n)
                    row["hot_list"], _ = _timed(client.list)
                    mark("%d-hot_best" % n)
                    row["hot_best"], _ = _timed(lambda c=client: c.best(metric="loss"))
                mark("%d-end" % n)
                if len(refs) != n or best.metadata["loss"] != 0.0:
                    raise RuntimeError("list found %d of %d checkpoints" % (len(refs), n))
            out["list"].append(row)
            log(
                "list %s %d: %s"
                % (
                    backend,
                    n,
                    {k: round(v, 2) for k, v in row.items() if k.endswith(("t", "best"))},
                )
            )
        if "gc" in curves:
            mark("%d-gc" % n)
            seconds, report = _timed(lambda: store.gc(grace_seconds=0))
            mark("%d-end" % n)
            if report.blobs_deleted:
                raise RuntimeError("gc deleted %d referenced blobs" % report.blobs_deleted)
            out["gc"].append(
                {"backend": backend, "blobs": report.blobs, "seconds": seconds, "deleted": 0}
            )
            log("gc %s: %d blobs, %.1f s" % (backend, report.blobs, seconds))
    if "gc" in curves:
        keys = sorted(o.key for o in store.storage.list(MANIFESTS_PREFIX))
        store.storage.delete_many(keys[::2], 16)
        seconds, report = _timed(lambda: store.gc(grace_seconds=0))
        out["gc"].append(
            {
                "backend": backend,
                "blobs": report.blobs,
                "seconds": seconds,
                "deleted": report.blobs_deleted,
            }
        )
        log("gc %s, half deleted: %d blobs gone, %.1f s" % (backend, report.blobs_deleted, seconds))
    return out


# ----------------------------------------------------------------------------------- concurrency
_STATUS = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) [^"]*" (\d{3}) ')


def concurrency_curve(work: Path, widths: list, mib: int) -> list:
    rows = []
    for width in widths:
        moto_log = work / ("moto-conc-%d.log" % width)
        moto = MotoServer(moto_log)
        try:
            bucket = _new_bucket(moto)
            out = work / ("conc-%d" % width)
            out.mkdir()
            env = flow_environment(
                work,
                METAFLOW_S3_ENDPOINT_URL=moto.endpoint,
                METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket,
                MFCKPT_CURVE_SPEC=json.dumps({"width": width, "mib": mib, "out": str(out)}),
                **S3_ENV,
            )
            failed = ""
            cmd = [sys.executable, str(HERE / "bench_curves_flow.py"), "--no-pylint"]
            cmd += ["--datastore=s3", "run", "--max-workers", str(width)]
            cmd += ["--max-num-splits", str(max(100, width))]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, cwd=str(work), capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                failed = (proc.stdout + proc.stderr)[-800:]
            saves = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
            codes = Counter()
            for line in moto_log.read_text(errors="replace").splitlines():
                m = _STATUS.search(line)
                if m:
                    codes[(m.group(1), m.group(2))] += 1
            nbytes = sum(s["bytes"] for s in saves)
            span = (max(s["end"] for s in saves) - min(s["start"] for s in saves)) if saves else 0
            bad = {"%s %s" % k: v for k, v in codes.items() if not k[1].startswith("2")}
            # A HEAD/GET answered 404 is an existence check finding nothing (a new blob).
            throttles = sum(v for (m, c), v in codes.items() if c in ("429", "503", "500"))
            rows.append(
                {
                    "tasks": width,
                    "saved": len(saves),
                    "bytes": nbytes,
                    "span": span,
                    "wall": wall,
                    "aggregate_mbps": nbytes / span / 1e6 if span else 0.0,
                    "task_seconds_median": sorted(s["seconds"] for s in saves)[len(saves) // 2]
                    if saves
                    else float("nan"),
                    "requests": sum(codes.values()),
                    "non_2xx": bad,
                    "throttles": throttles,
                    "failed": failed,
                }
            )
            log("concurrency %d: %s" % (width, rows[-1]))
        finally:
            moto.stop()
            shutil.rmtree(work / ("conc-%d" % width), ignore_errors=True)
    return rows


# ----------------------------------------------------------------------------------- report
def _fmt_s(x: float) -> str:
    return "—" if x != x else ("%.3f" % x if x < 10 else "%.1f" % x)


def report(raw: dict) -> list:
    """Print the tables; return the growth rates (one dict per fitted series)."""
    rates = []

    def rate(curve: str, series: str, xs, ys, flat: bool = False) -> str:
        s = slope(xs, ys)
        rates.append({"curve": curve, "series": series, "slope": s, "verdict": verdict(s, flat)})
        return "%.2f (%s)" % (s, verdict(s, flat))

    for backend in ("local", "s3"):
        rows = [r for r in raw.get("size", []) if r["backend"] == backend]
        if not rows:
            continue
        raw_cp = all("cp_save" in r for r in rows)  # local runs since 2026-12-07 10:20 UTC
        print("\n### Size: one checkpoint, %s store\n" % backend)
        if raw_cp:
            print("Each operation and its `cp -r` baseline start with an empty page cache.\n")
        head = ["size", "save s", "save MB/s", "save peak RSS", "load s", "load MB/s"]
        head += ["load peak RSS"] + (["cp -r save-side s", "cp -r load-side s"] if raw_cp else [])
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            b = r["bytes"]
            cells = [
                fmt_bytes(b),
                _fmt_s(r["save"]["seconds"]),
                "%.0f" % (b / r["save"]["seconds"] / 1e6),
                fmt_bytes(r["save"]["rss_extra"]),
                _fmt_s(r["load"]["seconds"]),
                "%.0f" % (b / r["load"]["seconds"] / 1e6),
                fmt_bytes(r["load"]["rss_extra"]),
            ]
            if raw_cp:
                cells += [_fmt_s(r["cp_save"]), _fmt_s(r["cp_load"])]
            print("| " + " | ".join(cells) + " |")
        xs = [r["bytes"] for r in rows]
        print()
        if raw_cp:
            for side in ("save", "load"):
                print(
                    "- raw `cp -r` (%s side) time growth: %s"
                    % (
                        side,
                        rate(
                            "size-" + backend,
                            "cp -r %s-side time" % side,
                            xs,
                            [r["cp_" + side] for r in rows],
                        ),
                    )
                )
        for op in ("save", "load"):
            print(
                "- %s time growth: %s"
                % (op, rate("size-" + backend, op + " time", xs, [r[op]["seconds"] for r in rows]))
            )
            print(
                "- %s peak RSS growth: %s"
                % (
                    op,
                    rate(
                        "size-" + backend,
                        op + " RSS",
                        xs,
                        [max(r[op]["rss_extra"], MiB) for r in rows],
                        flat=True,
                    ),
                )
            )
    for backend in ("local", "s3"):
        rows = [r for r in raw.get("list", []) if r["backend"] == backend]
        if not rows:
            continue
        cols = ("cold_list", "cold_best", "warm_list", "warm_best", "hot_list", "hot_best")
        if all(r.get("raw_list") is not None for r in rows):  # runs before 2026-12-07 lack it
            cols = ("raw_list",) + cols
        print("\n### list() and best(), %s store (seconds)\n" % backend)
        print("| checkpoints | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
        print("|---|" + "---|" * len(cols))
        for r in rows:
            print("| {:,} | ".format(r["count"]) + " | ".join(_fmt_s(r[c]) for c in cols) + " |")
        print()
        xs = [r["count"] for r in rows]
        if rows[0].get("cold_list_requests") is not None:
            print(
                "| checkpoints | "
                + " | ".join(c.replace("_", " ") + " requests" for c in cols)
                + " |"
            )
            print("|---|" + "---|" * len(cols))
            for r in rows:
                print(
                    "| {:,} | ".format(r["count"])
                    + " | ".join("{:,}".format(r[c + "_requests"] or 0) for c in cols)
                    + " |"
                )
            print()
            for c in cols:
                ys = [r[c + "_requests"] for r in rows]
                if all(ys):
                    print(
                        "- %s requests growth: %s"
                        % (c.replace("_", " "), rate("list-" + backend, c + " requests", xs, ys))
                    )
        for c in cols:
            print(
                "- %s growth: %s"
                % (c.replace("_", " "), rate("list-" + backend, c, xs, [r[c] for r in rows]))
            )
    for backend in ("local", "s3"):
        rows = [r for r in raw.get("gc", []) if r["backend"] == backend]
        if not rows:
            continue
        print("\n### gc, %s store\n" % backend)
        print("| blobs | deleted | seconds | blobs/s |")
        print("|---|---|---|---|")
        for r in rows:
            print(
                "| {:,} | {:,} | {} | {:,.0f} |".format(
                    r["blobs"], r["deleted"], _fmt_s(r["seconds"]), r["blobs"] / r["seconds"]
                )
            )
        marked = [r for r in rows if not r["deleted"]]
        if all(r.get("requests") for r in marked):
            print()
            print(
                "- S3 requests: %s"
                % ", ".join("{:,} blobs {:,}".format(r["blobs"], r["requests"]) for r in marked)
            )
            print(
                "- gc requests growth: %s"
                % rate(
                    "gc-" + backend,
                    "requests",
                    [r["blobs"] for r in marked],
                    [r["requests"] for r in marked],
                )
            )
        print()
        print(
            "- gc time growth (nothing to delete): %s"
            % rate(
                "gc-" + backend,
                "seconds",
                [r["blobs"] for r in marked],
                [r["seconds"] for r in marked],
            )
        )
    rows = raw.get("concurrency", [])
    if rows:
        print("\n### Concurrent tasks saving into one S3 store (moto)\n")
        print(
            "| tasks | saved | total | span s | aggregate MB/s | median task save s | requests "
            "| throttles (429/5xx) | other non-2xx | failed |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                "| %d | %d | %s | %s | %.0f | %s | %d | %d | %s | %s |"
                % (
                    r["tasks"],
                    r["saved"],
                    fmt_bytes(r["bytes"]),
                    _fmt_s(r["span"]),
                    r["aggregate_mbps"],
                    _fmt_s(r["task_seconds_median"]),
                    r["requests"],
                    r["throttles"],
                    ", ".join("%s: %d" % kv for kv in sorted(r["non_2xx"].items())) or "none",
                    "yes" if r["failed"] else "no",
                )
            )
        print()
        xs = [r["tasks"] for r in rows]
        print(
            "- span growth with tasks (same bytes per task): %s"
            % rate("concurrency", "span", xs, [r["span"] for r in rows])
        )
        print(
            "- requests per task growth: %s"
            % rate(
                "concurrency",
                "requests/task",
                xs,
                [r["requests"] / r["tasks"] for r in rows],
                flat=True,
            )
        )
    worse = [r for r in rates if r["verdict"] in ("WORSE THAN LINEAR", "GROWS")]
    print("\n### Growth rates (log-log slopes)\n")
    for r in rates:
        print("- %s / %s: %.2f %s" % (r["curve"], r["series"], r["slope"], r["verdict"]))
    print(
        "\nWorse than expected: %s"
        % (", ".join("%s/%s" % (r["curve"], r["series"]) for r in worse) or "none")
    )
    return rates


def plot(raw: dict, png_dir: Path) -> list:
    """One small PNG per curve (log-log axes); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = png_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=72)
        plt.close(fig)
        written.append(str(path))

    if raw.get("size"):
        fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
        for backend in ("local", "s3"):
            rows = [r for r in raw["size"] if r["backend"] == backend]
            if not rows:
                continue
            xs = [r["bytes"] / GiB for r in rows]
            for op, style in (("save", "o-"), ("load", "s--")):
                a.plot(xs, [r[op]["seconds"] for r in rows], style, label="%s %s" % (backend, op))
                b.plot(
                    xs,
                    [r[op]["rss_extra"] / MiB for r in rows],
                    style,
                    label="%s %s" % (backend, op),
                )
            if all("cp_save" in r for r in rows):  # the raw baselines, cold as the operations
                for side, style in (("save", "o:"), ("load", "s:")):
                    cps = [r["cp_" + side] for r in rows]
                    a.plot(xs, cps, style, label="cp -r, %s side" % side)
        a.set(xscale="log", yscale="log", xlabel="checkpoint GiB", ylabel="seconds", title="time")
        b.set(xscale="log", xlabel="checkpoint GiB", ylabel="MiB above baseline", title="peak RSS")
        b.set_ylim(bottom=0)
        a.legend(fontsize=7)
        b.legend(fontsize=7)
        save(fig, "size.png")
    if raw.get("list"):
        backends = [b for b in ("local", "s3") if any(r["backend"] == b for r in raw["list"])]
        fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 3.2), squeeze=False)
        for ax, backend in zip(axes[0], backends):
            rows = [r for r in raw["list"] if r["backend"] == backend]
            xs = [r["count"] for r in rows]
            for c in ("raw_list", "cold_list", "warm_list", "hot_list", "cold_best", "warm_best"):
                if any(r.get(c) is None for r in rows):
                    continue
                ax.plot(
                    xs,
                    [r[c] for r in rows],
                    "o-" if "list" in c else "s--",
                    label=c.replace("_", " "),
                )
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="checkpoints",
                ylabel="seconds",
                title="list/best, %s" % backend,
            )
            ax.legend(fontsize=6)
        save(fig, "list.png")
    if raw.get("gc"):
        fig, ax = plt.subplots(figsize=(4, 3.2))
        for backend in ("local", "s3"):
            rows = [r for r in raw["gc"] if r["backend"] == backend and not r["deleted"]]
            if rows:
                ax.plot(
                    [r["blobs"] for r in rows], [r["seconds"] for r in rows], "o-", label=backend
                )
        ax.set(
            xscale="log", yscale="log", xlabel="blobs", ylabel="seconds", title="gc (mark + sweep)"
        )
        ax.legend(fontsize=7)
        save(fig, "gc.png")
    if raw.get("concurrency"):
        rows = raw["concurrency"]
        fig, ax = plt.subplots(figsize=(4, 3.2))
        ax.plot([r["tasks"] for r in rows], [r["aggregate_mbps"] for r in rows], "o-")
        ax.set(
            xscale="log",
            xlabel="concurrent tasks",
            ylabel="aggregate MB/s",
            title="64 MiB per task, S3",
        )
        save(fig, "concurrency.png")
    return written


# ----------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, < 3 min")
    p.add_argument("--only", default="size,list,gc,concurrency", help="curves to run")
    p.add_argument("--skip-s3", action="store_true", help="local store only")
    p.add_argument("--skip-local", action="store_true", help="S3 only (size, list, gc)")
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument("--png-dir", default=str(HERE / "curves"), help="where the PNGs go")
    p.add_argument("--workdir", help="parent of the temporary work directory")
    p.add_argument("--size-gib", help="local sizes, e.g. 1,4,16")
    p.add_argument("--s3-size-gib", help="S3 sizes, e.g. 1,4")
    p.add_argument("--counts", help="checkpoint counts of the list/gc curves, e.g. 1000,10000")
    p.add_argument("--s3-counts", help="the same on S3")
    p.add_argument("--tasks", help="concurrent tasks, e.g. 1,8,32")
    p.add_argument("--task-mib", type=int, help="MiB each concurrent task saves")
    p.add_argument(
        "--from-json",
        help="measure nothing: print and plot the curves of these --json files (comma-separated, "
        "e.g. runs of different curves merged)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    def ints(text, default, cast=float):
        return [cast(x) for x in (text.split(",") if text else default)]

    q = args.quick
    args.size_gib = ints(args.size_gib, ["0.03125", "0.125", "0.5"] if q else ["1", "4", "16"])
    args.s3_size_gib = ints(args.s3_size_gib, ["0.03125", "0.125"] if q else ["1", "4"])
    args.counts = ints(
        args.counts, ["100", "300", "1000"] if q else ["1000", "10000", "100000"], int
    )
    # The S3 stores are built locally and copied into moto (see _copy_to_s3).
    args.s3_counts = ints(args.s3_counts, ["100", "300"] if q else ["1000", "10000", "100000"], int)
    args.tasks = ints(args.tasks, ["1", "2"] if q else ["1", "8", "32"], int)
    args.task_mib = args.task_mib or (8 if q else 64)
    args.only = set(args.only.split(","))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.from_json:
        raw = {}
        for name in args.from_json.split(","):
            for curve, rows in json.loads(Path(name).read_text()).items():
                if curve in ("size", "list", "gc", "concurrency", "s3_build"):
                    raw.setdefault(curve, []).extend(rows)
        raw["rates"] = report(raw)
        if args.json:  # the merged runs as one (report.py --adopt takes it)
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
        print("\nPNGs: %s" % ", ".join(plot(raw, Path(args.png_dir))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="mfckpt-curves-", dir=args.workdir)).resolve()
    if not args.skip_s3:
        os.environ.update(S3_ENV)  # moto's fake credentials, for boto3 here and in workers
    raw: dict = {"args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}}
    started = time.perf_counter()
    try:
        if "size" in args.only:
            raw["size"] = []
            if not args.skip_local:
                raw["size"] += size_curve(work, args.size_gib, "local", work / "moto.log")
            if not args.skip_s3:
                raw["size"] += size_curve(work, args.s3_size_gib, "s3", work / "moto.log")
        if args.only & {"list", "gc"}:
            raw["list"], raw["gc"] = [], []
            if not args.skip_local:
                got = list_gc_curve(work, args.counts, "local", work / "moto.log", args.only)
                raw["list"], raw["gc"] = got["list"], got["gc"]
            if not args.skip_s3:
                got = list_gc_curve(work, args.s3_counts, "s3", work / "moto.log", args.only)
                raw["list"] += got["list"]
                raw["gc"] += got["gc"]
                raw["s3_build"] = got.get("build", [])
        if "concurrency" in args.only and not args.skip_s3:
            raw["concurrency"] = concurrency_curve(work, args.tasks, args.task_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw["total_seconds"] = time.perf_counter() - started
    raw["rates"] = report(raw)
    if args.json:  # before plotting: a plotting failure must not lose the measurements
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    print("\nPNGs: %s" % ", ".join(plot(raw, Path(args.png_dir))))
    print(
        "Total %.0f s on %d CPUs (shared: figures are noisy, the slopes are what to read)."
        % (raw["total_seconds"], os.cpu_count() or 0)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
