"""Lifecycle targets: garbage collection speed, and storage kept bounded by retention + GC.

    python benchmarks/bench_lifecycle.py                        # defaults below, local and S3
    python benchmarks/bench_lifecycle.py --gc-blobs 1000 --gc-manifests 100 --saves 10 \\
        --size-mib 20                                           # smoke run, < 1 minute
    python benchmarks/bench_lifecycle.py --skip-s3              # local only

1. **GC over ``--gc-blobs`` blobs and ``--gc-manifests`` manifests.**  A store is filled with the
   core API (``CheckpointStore.save`` with ``small_size=0``, so that every file is its own blob):
   ``2 × gc-manifests`` checkpoints of ``gc-blobs / (2 × gc-manifests)`` distinct random files
   each, then every other manifest is deleted, as retention would.  GC then sees
   ``gc-manifests`` manifests and ``gc-blobs`` blobs, half of them unreferenced, and
   ``Checkpoint(root=...).gc(grace_hours=0)`` is timed.  Baselines, in the same process, on the
   same store: the work any mark-and-sweep GC must do at least, with plain calls: one listing of
   every object, a GET (read) of every manifest on a thread pool of our worker count, and the
   deletion of as many (dummy) objects as GC deletes (boto3 ``delete_objects`` by 1,000 keys on
   S3, ``os.unlink`` on the same thread pool locally).  ``sync`` precedes every timed step.
   Target (on the moto S3 server): < 30 s.
2. **Physical bytes under keep-last-3.**  ``bench_lifecycle_flow.py`` (a real flow,
   ``@checkpoint(keep_last=3)``) saves a directory of ``--files`` files, ``--size-mib`` MiB in all,
   ``--saves`` times, one file getting new random bytes before every save but the first.  Then
   ``Checkpoint(root=...).du()``, ``gc(grace_hours=0)`` and ``du()`` again.  Target: fewer than
   2 × ``--size-mib`` bytes stored after GC (200 MiB for the default 100 MiB); references:
   ``--saves`` full copies (no dedup, no retention) and 3 full copies (keep-last-3 without
   dedup).

Both run on the local datastore and on S3 (a moto server on 127.0.0.1, as in ``bench.py``).
Every call into the library runs in a child process (this script with ``--child``) or in the
flow, each in an isolated Metaflow environment (``bench.flow_environment``).  Nothing here
asserts: targets are printed, not enforced; the exit status is non-zero only when something
fails to run.  See benchmarks/README.md ("Lifecycle").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import (  # noqa: E402
    S3_ENV,
    MotoServer,
    Table,
    flow_environment,
    fmt_bytes,
    remove,
    run_flow,
    s3_client,
)

FLOW = "bench_lifecycle_flow.py"
GC_TARGET_SECONDS = 30.0
#: Flow, step and namespace of the checkpoints the GC benchmark builds.
GC_FLOW, GC_STEP, GC_NAMESPACE = "GcBenchFlow", "train", "user:tester"


def log(msg: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# =========================================================================== child processes
# Run as `python bench_lifecycle.py --child SPEC.json` in a flow environment; they import the
# library (and metaflow) so that this process never does, and write their result to spec["out"].


def _write_random_files(directory: str, count: int, size: int) -> None:
    os.makedirs(directory, exist_ok=True)
    for j in range(count):
        with open(os.path.join(directory, "f%03d.bin" % j), "wb") as f:
            f.write(os.urandom(size))


class _Raw:
    """Plain calls on the store's bytes, no library code: the baselines of the GC row."""

    def __init__(self, root: str, workers: int):
        self.workers = workers
        if root.startswith("s3://"):
            self.bucket, _, prefix = root[len("s3://") :].partition("/")
            self.prefix = prefix.rstrip("/") + "/" if prefix else ""
            endpoint = os.environ["METAFLOW_S3_ENDPOINT_URL"]
            self.client = s3_client(endpoint, workers)
        else:
            self.client = None
            self.root = root

    def list_all(self) -> list:
        """(key relative to the root, size) of every object: one recursive listing."""
        out = []
        if self.client is not None:
            paginator = self.client.get_paginator("list_objects_v2")
            cut = len(self.prefix)
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                out += [(o["Key"][cut:], o["Size"]) for o in page.get("Contents", ())]
            return out
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                st = os.stat(path)  # GC needs size and mtime, as ours reads them
                out.append((os.path.relpath(path, self.root).replace(os.sep, "/"), st.st_size))
        return out

    def read_all(self, keys: list) -> int:
        """Read every key on a pool of ``workers`` threads; returns the bytes read."""

        def get(key: str) -> int:
            if self.client is not None:
                resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
                with resp["Body"] as body:
                    return len(body.read())
            with open(os.path.join(self.root, key), "rb") as f:
                return len(f.read())

        with ThreadPoolExecutor(self.workers) as pool:
            return sum(pool.map(get, keys))

    def make_dummies(self, count: int, size: int) -> list:
        """``count`` objects of ``size`` bytes outside the checkpoint root (not timed)."""
        tag = uuid.uuid4().hex[:8]
        data = os.urandom(size)
        if self.client is not None:
            keys = ["gc-baseline-%s/%06d" % (tag, i) for i in range(count)]

            def put(key: str) -> None:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(put, keys))
            return keys
        directory = os.path.join(os.path.dirname(self.root), "gc-baseline-" + tag)
        os.makedirs(directory)
        paths = [os.path.join(directory, "%06d" % i) for i in range(count)]
        for path in paths:
            with open(path, "wb") as f:
                f.write(data)
        return paths

    def delete(self, keys: list) -> None:
        if self.client is not None:
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            return
        # With our worker count, as our local GC deletes.  (On this VM's ext4, mounted with
        # `discard`, unlinking a file already written back costs ~1 ms: a sequential loop over
        # 5,000 such files takes seconds, threads overlap that wait.)
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(os.unlink, keys))
        if keys:
            os.rmdir(os.path.dirname(keys[0]))


def child_gc(spec: dict) -> dict:
    """Fill a store with checkpoints, prune half, time the baselines and then GC."""
    from dataclasses import replace

    from metaflow import Checkpoint

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import BLOBS_PREFIX
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (
        CheckpointStore,
    )

    root = spec["root"]
    base = store_for_url(root)
    # small_size=0: no packing, every file is a blob of its own.
    store = CheckpointStore(base.storage, replace(base.options, small_size=0))
    workers = store.options.workers
    saved = 2 * spec["manifests"]
    per = max(1, spec["blobs"] // saved)
    threads = spec["build_threads"]
    keys: list = [None] * saved
    scratch = spec["scratch"]

    def build(t: int) -> None:
        src = os.path.join(scratch, "src-%d" % t)
        for i in range(t, saved, threads):
            _write_random_files(src, per, spec["file_bytes"])
            scope = Scope(GC_NAMESPACE, GC_FLOW, GC_STEP, "_", str(1 + i // 100), str(i), 0)
            keys[i] = store.save(src, scope, metadata={"i": i}).key

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(build, range(threads)))
    build_seconds = time.perf_counter() - t0
    pruned, kept = keys[1::2], keys[0::2]
    store.storage.delete_many(pruned, workers)
    expected_garbage = len(pruned) * per
    out: dict = {
        "root": root,
        "workers": workers,
        "saved": saved,
        "files_per_checkpoint": per,
        "file_bytes": spec["file_bytes"],
        "kept": len(kept),
        "pruned": len(pruned),
        "expected_garbage": expected_garbage,
        "build_seconds": build_seconds,
    }

    # ---- baselines: list everything, read every manifest, delete as many objects as GC will.
    raw = _Raw(root, workers)
    # Same conditions for every timed operation: everything written back first (`sync`).
    os.sync()
    t0 = time.perf_counter()
    listed = raw.list_all()
    out["raw_list_seconds"] = time.perf_counter() - t0
    out["objects"] = len(listed)
    out["blobs_before"] = sum(1 for k, _ in listed if k.startswith(BLOBS_PREFIX))
    manifests = [k for k, _ in listed if k.startswith("manifests/") and k.endswith(".json")]
    out["manifests_before"] = len(manifests)
    t0 = time.perf_counter()
    out["raw_get_bytes"] = raw.read_all(manifests)
    out["raw_get_seconds"] = time.perf_counter() - t0
    dummies = raw.make_dummies(expected_garbage, spec["file_bytes"])
    os.sync()
    t0 = time.perf_counter()
    raw.delete(dummies)
    out["raw_delete_seconds"] = time.perf_counter() - t0
    out["raw_delete_count"] = len(dummies)

    # ---- ours: the client API, as a user runs it.
    client = Checkpoint(root=root)
    os.sync()
    t0 = time.perf_counter()
    out["gc"] = client.gc(grace_hours=0)
    out["gc_wall_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["gc_again"] = client.gc(grace_hours=0)
    out["gc_again_wall_seconds"] = time.perf_counter() - t0

    # ---- check: every kept checkpoint's blobs survive, every pruned one's are gone.
    left = [o for o in store.storage.list(BLOBS_PREFIX)]
    out["blobs_after"] = len(left)
    sample = store.read(kept[-1])
    dest = os.path.join(scratch, "loaded")
    store.load(sample, dest)
    out["kept_loads"] = len(os.listdir(dest)) == per
    return out


def child_usage(spec: dict) -> dict:
    """``du()`` before and after ``gc(grace_hours=0)`` of the flow's checkpoint root."""
    from metaflow import Checkpoint

    client = Checkpoint(root=spec["root"])
    out: dict = {}
    t0 = time.perf_counter()
    out["du_before"] = client.du()
    out["du_seconds"] = time.perf_counter() - t0
    os.sync()
    t0 = time.perf_counter()
    out["gc"] = client.gc(grace_hours=0)
    out["gc_wall_seconds"] = time.perf_counter() - t0
    out["du_after"] = client.du()
    return out


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = {"gc": child_gc, "usage": child_usage}[spec["mode"]](spec)
    Path(spec["out"]).write_text(json.dumps(result, indent=1, default=str))
    return 0


def run_child(work: Path, tag: str, spec: dict, env: dict) -> dict:
    spec = dict(spec, out=str(work / ("child-%s.out.json" % tag)))
    spec_path = work / ("child-%s.spec.json" % tag)
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    proc = subprocess.run(cmd, env=env, cwd=str(work), capture_output=True, text=True)
    (work / ("child-%s.log" % tag)).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError("child %s failed (exit %d):\n%s" % (tag, proc.returncode, tail))
    return json.loads(Path(spec["out"]).read_text())


# =========================================================================== the two benchmarks
def gc_bench(work: Path, tag: str, root: str, env: dict, args) -> dict:
    scratch = work / ("gc-scratch-%s" % tag)
    scratch.mkdir()
    spec = {
        "mode": "gc",
        "root": root,
        "scratch": str(scratch),
        "manifests": args.gc_manifests,
        "blobs": args.gc_blobs,
        "file_bytes": args.gc_file_kib * 1024,
        "build_threads": args.build_threads,
    }
    result = run_child(work, "gc-" + tag, spec, env)
    remove(scratch)
    return result


def retention_bench(work: Path, tag: str, env: dict, args, top_args=()) -> dict:
    spec = {
        "out": str(work / ("flow-result-%s" % tag)),
        "data": str(work / ("flow-data-%s" % tag)),
        "saves": args.saves,
        "files": args.files,
        "size_mib": args.size_mib,
    }
    env = dict(env, MFCKPT_BENCH_SPEC=json.dumps(spec), MFCKPT_BENCH_KEEP_LAST=str(args.keep_last))
    seconds = run_flow(FLOW, env, work, top_args, logfile=work / ("flow-%s.log" % tag))
    flow = json.loads(Path(spec["out"] + ".json").read_text())
    flow["run_seconds"] = seconds
    usage = run_child(work, "usage-" + tag, {"mode": "usage", "root": flow["root"]}, env)
    return {"flow": flow, "usage": usage}


# =========================================================================== table
def gc_rows(t: Table, label: str, res: dict, judged: bool) -> None:
    gc = res["gc"]
    base = res["raw_list_seconds"] + res["raw_get_seconds"] + res["raw_delete_seconds"]
    what = "plain S3 calls (boto3)" if label == "S3" else "plain file calls"
    t.add(
        "%s GC, %s blobs / %s manifests, %s unreferenced: time"
        % (
            label,
            _n(res["blobs_before"]),
            _n(res["manifests_before"]),
            _n(res["expected_garbage"]),
        ),
        "%.2f s" % res["gc_wall_seconds"],
        "%.2f s = list all %.2f + GET %s manifests %.2f + delete %s objects %.2f (%s)"
        % (
            base,
            res["raw_list_seconds"],
            _n(res["manifests_before"]),
            res["raw_get_seconds"],
            _n(res["raw_delete_count"]),
            res["raw_delete_seconds"],
            what,
        ),
        "%.2f×" % (res["gc_wall_seconds"] / base),
        ("< %.0f s" % GC_TARGET_SECONDS) if judged else "— (reference)",
        (res["gc_wall_seconds"] < GC_TARGET_SECONDS) if judged else None,
    )
    correct = (
        gc["blobs_deleted"] == res["expected_garbage"]
        and res["blobs_after"] == res["blobs_before"] - res["expected_garbage"]
        and res["kept_loads"]
    )
    t.add(
        "%s GC: blobs deleted, bytes reclaimed" % label,
        "%s, %s" % (_n(gc["blobs_deleted"]), fmt_bytes(gc["bytes_reclaimed"])),
        "%s unreferenced blobs, %s (%s blobs left; kept checkpoints load: %s)"
        % (
            _n(res["expected_garbage"]),
            fmt_bytes(res["expected_garbage"] * res["file_bytes"]),
            _n(res["blobs_after"]),
            "yes" if res["kept_loads"] else "NO",
        ),
        "—",
        "all unreferenced, nothing else",
        correct,
    )
    again = res["gc_again"]
    t.add(
        "%s GC again, nothing to reclaim: time" % label,
        "%.2f s" % res["gc_again_wall_seconds"],
        "%.2f s = list all + GET manifests (above)"
        % (res["raw_list_seconds"] + res["raw_get_seconds"]),
        "%.2f×"
        % (res["gc_again_wall_seconds"] / (res["raw_list_seconds"] + res["raw_get_seconds"])),
        "— (info)",
        None if again["blobs_deleted"] == 0 else False,
    )


def retention_rows(t: Table, label: str, res: dict, args) -> None:
    flow, usage = res["flow"], res["usage"]
    dir_bytes, file_bytes, saves = flow["dir_bytes"], flow["file_bytes"], flow["saves"]
    keep = flow["keep_last"]
    before, after = usage["du_before"], usage["du_after"]
    target = 2 * dir_bytes
    head = "%s %d saves of %s (1 × %s file changed per save), keep_last=%d:" % (
        label,
        saves,
        fmt_bytes(dir_bytes),
        fmt_bytes(file_bytes),
        keep,
    )
    t.add(
        head + " physical bytes stored after GC",
        fmt_bytes(after["stored_bytes"]),
        "%s (%d full copies) / %s (%d full copies)"
        % (fmt_bytes(keep * dir_bytes), keep, fmt_bytes(saves * dir_bytes), saves),
        "%.2f× / %.3f×"
        % (after["stored_bytes"] / (keep * dir_bytes), after["stored_bytes"] / (saves * dir_bytes)),
        "< %s" % fmt_bytes(target),
        after["stored_bytes"] < target,
    )
    t.add(
        head + " physical bytes stored before GC",
        "%s in %d blobs" % (fmt_bytes(before["stored_bytes"]), before["stored_blobs"]),
        "%s (%d full copies)" % (fmt_bytes(saves * dir_bytes), saves),
        "%.3f×" % (before["stored_bytes"] / (saves * dir_bytes)),
        "— (info)",
    )
    total = after["total"]
    t.add(
        head + " kept checkpoints: logical / physical bytes",
        "%d: %s / %s"
        % (
            total["checkpoints"],
            fmt_bytes(total["logical_bytes"]),
            fmt_bytes(total["physical_bytes"]),
        ),
        "%d: %s (%d full copies)" % (keep, fmt_bytes(keep * dir_bytes), keep),
        "—",
        "%d kept" % keep,
        total["checkpoints"] == keep and len(flow["remaining"]) == keep,
    )
    gc = usage["gc"]
    t.add(
        "%s GC after the saves: time, blobs deleted, bytes reclaimed" % label,
        "%.2f s, %d, %s"
        % (usage["gc_wall_seconds"], gc["blobs_deleted"], fmt_bytes(gc["bytes_reclaimed"])),
        "—",
        "—",
        "— (info)",
    )
    saves_s = flow["save_seconds"]
    prune = flow["prune_seconds"]
    t.add(
        "%s flow with the %d saves: `run` wall time" % (label, saves),
        "%.1f s" % flow["run_seconds"],
        "saves %.1f s in all (median save %.0f ms, of which retention %.0f ms); "
        "rewriting files %.1f s"
        % (
            sum(saves_s),
            1000 * statistics.median(saves_s),
            1000 * statistics.median(prune) if prune else float("nan"),
            flow["rewrite_seconds"],
        ),
        "—",
        "— (info)",
    )


def _n(value: int) -> str:
    return f"{value:,}"


def build_table(raw: dict, args) -> Table:
    t = Table()
    for label, key, judged in (("local", "gc_local", False), ("S3", "gc_s3", True)):
        if key in raw:
            gc_rows(t, label, raw[key], judged)
    for label, key in (("local", "ret_local"), ("S3", "ret_s3")):
        if key in raw:
            retention_rows(t, label, raw[key], args)
    return t


def print_report(raw: dict, table: Table, args) -> None:
    print(
        "metaflow-checkpointing lifecycle benchmark: GC over %s blobs (%d KiB) / %s manifests; "
        "%d saves of %d MiB in %d files, keep_last=%d; %d CPUs"
        % (
            _n(args.gc_blobs),
            args.gc_file_kib,
            _n(args.gc_manifests),
            args.saves,
            args.size_mib,
            args.files,
            args.keep_last,
            os.cpu_count() or 1,
        )
    )
    print()
    print(table.markdown())
    print()
    notes = []
    for label, key in (("local", "gc_local"), ("S3", "gc_s3")):
        res = raw.get(key)
        if res is None:
            continue
        gc = res["gc"]
        notes.append(
            "%s GC store: %s checkpoints of %d × %d KiB random files saved with "
            "`CheckpointStore.save` (small_size=0: one blob per file) on %d threads in %.1f s, "
            "then every other manifest deleted; %s objects in the root. GC's own timer: %.2f s "
            "(wall %.2f s, incl. building the client). Workers (ours and the GET baseline): %d."
            % (
                label,
                _n(res["saved"]),
                res["files_per_checkpoint"],
                res["file_bytes"] // 1024,
                args.build_threads,
                res["build_seconds"],
                _n(res["objects"]),
                gc["seconds"],
                res["gc_wall_seconds"],
                res["workers"],
            )
        )
    for label, key in (("local", "ret_local"), ("S3", "ret_s3")):
        res = raw.get(key)
        if res is None:
            continue
        flow, usage = res["flow"], res["usage"]
        before = usage["du_before"]
        notes.append(
            "%s flow: checkpoints left in the task (newest first, by save number): %s; "
            "`du()` before GC: %s referenced by the kept checkpoints, %s stored; %.2f s. Save "
            "times (s): min %.3f, median %.3f, max %.3f."
            % (
                label,
                flow["remaining_saves"],
                fmt_bytes(before["total"]["physical_bytes"]),
                fmt_bytes(before["stored_bytes"]),
                usage["du_seconds"],
                min(flow["save_seconds"]),
                statistics.median(flow["save_seconds"]),
                max(flow["save_seconds"]),
            )
        )
    if "gc_s3" in raw or "ret_s3" in raw:
        notes.append(
            "S3 is moto (Python, one process) on 127.0.0.1 sharing the CPUs with the client: "
            "times compare request patterns and client overhead, not a real network."
        )
    notes.append("Total benchmark time: %.0f s." % raw["total_seconds"])
    for n in notes:
        print("- " + n)


# =========================================================================== main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gc-blobs", type=int, default=10000, help="blobs GC sees (half garbage)")
    p.add_argument("--gc-manifests", type=int, default=1000, help="manifests GC sees")
    p.add_argument("--gc-file-kib", type=int, default=4, help="size of each GC-test blob (KiB)")
    p.add_argument(
        "--build-threads", type=int, default=4, help="concurrent saves building the GC store"
    )
    p.add_argument("--saves", type=int, default=100, help="saves in the keep-last flow")
    p.add_argument("--size-mib", type=int, default=100, help="size of the saved directory")
    p.add_argument("--files", type=int, default=10, help="files in the saved directory")
    p.add_argument("--keep-last", type=int, default=3, help="@checkpoint(keep_last=N)")
    p.add_argument("--skip-s3", action="store_true", help="local rows only (no moto server)")
    p.add_argument("--skip-gc", action="store_true", help="skip benchmark 1 (GC)")
    p.add_argument("--skip-flow", action="store_true", help="skip benchmark 2 (keep-last flow)")
    p.add_argument("--workdir", help="parent of the temporary directory (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", help="also write every raw measurement to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.gc_blobs, args.gc_manifests, args.gc_file_kib, args.build_threads) < 1:
        p.error("GC sizes and --build-threads must be positive")
    if min(args.saves, args.size_mib, args.files, args.keep_last) < 1:
        p.error("--saves, --size-mib, --files and --keep-last must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mfckpt-lifecycle-", dir=args.workdir or None)).resolve()
    t_start = time.perf_counter()
    raw: dict = {"args": vars(args), "workdir": str(work)}
    moto = None
    try:
        log("work dir %s" % work)
        env = flow_environment(work)
        if not args.skip_gc:
            raw["gc_local"] = gc_bench(work, "local", str(work / "gc-store"), env, args)
            log("local GC: %.2f s" % raw["gc_local"]["gc_wall_seconds"])
            remove(work / "gc-store")
        if not args.skip_flow:
            raw["ret_local"] = retention_bench(work, "local", env, args)
            log("local keep-last flow: %.1f s" % raw["ret_local"]["flow"]["run_seconds"])
            remove(work / "mf-local" / ".metaflow" / "mf.checkpointing")
        if not args.skip_s3:
            os.environ.update(S3_ENV)
            moto = MotoServer(work / "moto.log")
            log("moto server on %s" % moto.endpoint)
            client = s3_client(moto.endpoint, 10)
            bucket = "mfckpt-lifecycle-%s" % uuid.uuid4().hex[:8]
            client.create_bucket(Bucket=bucket)
            s3env = flow_environment(
                work,
                METAFLOW_S3_ENDPOINT_URL=moto.endpoint,
                METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket,
                **S3_ENV,
            )
            if not args.skip_gc:
                root = "s3://%s/gc-store" % bucket
                raw["gc_s3"] = gc_bench(work, "s3", root, s3env, args)
                log("S3 GC: %.2f s" % raw["gc_s3"]["gc_wall_seconds"])
            if not args.skip_flow:
                raw["ret_s3"] = retention_bench(work, "s3", s3env, args, ("--datastore=s3",))
                log("S3 keep-last flow: %.1f s" % raw["ret_s3"]["flow"]["run_seconds"])
    finally:
        if moto is not None:
            moto.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            remove(work)
    raw["total_seconds"] = time.perf_counter() - t_start

    table = build_table(raw, args)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    print()
    print_report(raw, table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
