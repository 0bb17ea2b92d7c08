"""Browsing targets of the checkpoint client, measured against raw baselines in the same run.

    python benchmarks/bench_browse.py                                   # 1,000 checkpoints, 1 GiB
    python benchmarks/bench_browse.py --checkpoints 100 --size-mib 64   # smoke run
    python benchmarks/bench_browse.py --skip-s3                         # local datastore only

1. ``Checkpoint().list("<Flow>/<run>/<step>")`` over ``--checkpoints`` checkpoints of one step:
   ``bench_browse_flow.py`` saves them in a real run (local datastore, then ``--datastore=s3``
   against a moto server), then fresh Python processes in the flow's environment time the first
   list (cold: no summary index yet, so it reads every manifest and writes the index), a later
   list (warm: reads the index) and ``best(metric="val_loss")``.  Baselines, in the same kind of
   process: the raw prefix listing (``os.walk`` / boto3 ``list_objects_v2``) and the listing plus
   a read of every manifest (plain file reads / boto3 GETs on a thread pool of our worker count).
2. Reading one 4 KiB file of a ``--size-mib`` checkpoint (16 large random files + ``small.txt``)
   saved with ``CheckpointStore.save``: bytes fetched by ``store.open(manifest, "small.txt")``
   (counted by wrapping the backend's ``_get_bytes``) and its time, against downloading the whole
   checkpoint with ``store.load``.

Nothing here asserts: targets are printed, not enforced; the exit status is non-zero only when
something fails to run (or a listing returns wrong results).  See benchmarks/README.md.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _benchutil import MiB, prepare, recycle_size  # noqa: E402
from bench import (  # noqa: E402
    BIG_FILES,
    S3_ENV,
    MotoServer,
    Table,
    flow_environment,
    fmt_bytes,
    make_big,
    remove,
    run_flow,
    s3_client,
)

FLOW = "bench_browse_flow.py"
SMALL_NAME = "small.txt"
SMALL_SIZE = 4096
LIST_TARGET = {"local": 1.0, "s3": 3.0}
BYTES_TARGET = MiB


def log(msg: str) -> None:
    print("[bench-browse %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def median(values) -> float:
    return statistics.median(values)


# ===================================================================================== child
# Everything timed runs in a fresh Python process with the flow's environment (``--child``):
# imports happen before the clock starts; the call (client creation included) is timed.


class _Timers:
    """Wall time and calls of wrapped functions, for a breakdown of one client call."""

    def __init__(self):
        self.seconds: dict = {}
        self.calls: dict = {}

    def wrap(self, owner, attr: str, name: str, timed: bool = True) -> None:
        fn = getattr(owner, attr)

        def wrapper(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1  # dict update: atomic under the GIL
            if not timed:
                return fn(*a, **k)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, wrapper)


def _instrument() -> _Timers:
    """Time the phases of ``Checkpoint().list``: locating the store (Metaflow client), the
    prefix listing, summaries (index read, manifest reads, index write)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.client import (
        listing as client_mod,  # where Checkpoint().list locates a target
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import store as store_mod
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import summary

    timers = _Timers()
    timers.wrap(client_mod, "locate", "locate")
    timers.wrap(store_mod.CheckpointStore, "headers", "listing")
    timers.wrap(store_mod.CheckpointStore, "summaries", "summaries")
    timers.wrap(summary.SummaryIndex, "_read_index", "index read")
    timers.wrap(summary.SummaryIndex, "_write_index", "index write")
    timers.wrap(store_mod.CheckpointStore, "read", "manifest reads", timed=False)
    if os.environ.get("METAFLOW_S3_ENDPOINT_URL"):
        from metaflow_extensions.checkpointing.plugins.checkpointing.storage import s3

        timers.wrap(s3.S3Storage, "_make_client", "S3 client creation (within listing)")
    return timers


def _s3_location(root: str, prefix: str) -> tuple:
    bucket, _, base = root[len("s3://") :].partition("/")
    return bucket, (base.strip("/") + "/" if base.strip("/") else "") + prefix


def child_list(spec: dict, best: bool) -> dict:
    from metaflow import Checkpoint

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
        step_index_key,
        step_prefix_of,
    )

    if spec["root"].startswith("s3://"):
        import boto3  # noqa: F401 - imported before the clock starts, as everything else

    idx = step_index_key(step_prefix_of(spec["key"]))
    side = store_for_url(spec["root"]).storage  # not the client's store: no shared state
    out: dict = {"index_before": side.exists(idx)}
    if spec.get("drop_index"):
        side.delete(idx)
    timers = _instrument()
    t0 = time.perf_counter()
    if best:
        ref = Checkpoint().best(spec["target"], metric="val_loss")
        refs = [ref]
    else:
        refs = Checkpoint().list(spec["target"])
    out["seconds"] = time.perf_counter() - t0
    out["phases"] = timers.seconds
    out["calls"] = timers.calls
    out["count"] = len(refs)
    out["index_after"] = side.exists(idx)
    if out["index_after"]:
        out["index_bytes"] = len(side.get_bytes(idx))
    with_loss = [r for r in refs if isinstance(r.metadata.get("val_loss"), (int, float))]
    if with_loss:
        low = min(with_loss, key=lambda r: r.metadata["val_loss"])
        out["best_step"], out["best_val_loss"] = low.metadata["step"], low.metadata["val_loss"]
    out["without_metadata"] = len(refs) - len(with_loss)
    return out


def child_raw(spec: dict, read_all: bool) -> dict:
    """The baselines: the prefix listing alone, or the listing plus a read of every manifest."""
    from concurrent.futures import ThreadPoolExecutor

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        transfer_options,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import step_prefix_of

    workers = transfer_options().workers
    prefix = step_prefix_of(spec["key"])
    root = spec["root"]
    out: dict = {"workers": workers}
    if root.startswith("s3://"):
        bucket, key_prefix = _s3_location(root, prefix)
        t0 = time.perf_counter()
        client = s3_client(os.environ["METAFLOW_S3_ENDPOINT_URL"], workers)
        out["client_seconds"] = time.perf_counter() - t0  # not part of the timed baseline

        def get(key: str) -> dict:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with body:
                return json.loads(body.read())

        t0 = time.perf_counter()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key_prefix
        ):
            keys.extend(o["Key"] for o in page.get("Contents", ()) if o["Key"].endswith(".json"))
        if read_all:
            with ThreadPoolExecutor(workers) as pool:
                docs = list(pool.map(get, keys))
    else:
        top = os.path.join(root, *prefix.rstrip("/").split("/"))

        def get(path: str) -> dict:
            with open(path, "rb") as f:
                return json.loads(f.read())

        t0 = time.perf_counter()
        keys = []
        for dirpath, _dirs, names in os.walk(top):
            keys.extend(os.path.join(dirpath, n) for n in names if n.endswith(".json"))
        if read_all:
            docs = [get(p) for p in keys]
    out["seconds"] = time.perf_counter() - t0
    out["count"] = len(keys)
    if read_all:
        out["bytes_json"] = sum(len(json.dumps(d)) for d in docs)
    return out


def child_open(spec: dict) -> dict:
    """Save the big checkpoint with the core API, read its small file, then load all of it."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope

    if spec["root"].startswith("s3://"):
        import boto3  # noqa: F401

    src = spec["src"]
    scope = Scope("user:tester", "BrowseBigCheckpoint", "save", "_", spec["run"], "1", 0)
    store = store_for_url(spec["root"])
    t0 = time.perf_counter()
    manifest = store.save(src, scope, name="big", metadata={"bench": "bench_browse"})
    out: dict = {"save_seconds": time.perf_counter() - t0, "key": manifest.key}
    out["size"], out["files"] = manifest.size, len(manifest.files)
    with open(os.path.join(src, SMALL_NAME), "rb") as f:
        expected = f.read()

    def counted_store() -> tuple:
        """A fresh store whose backend counts what it fetches (requests and bytes)."""
        s = store_for_url(spec["root"])
        storage = s.storage
        count = {"requests": 0, "bytes": 0, "file_requests": 0, "file_bytes": 0}
        get_bytes, get_file = storage._get_bytes, storage._get_file

        def _get_bytes(key, start, length):
            data = get_bytes(key, start, length)
            count["requests"] += 1
            count["bytes"] += len(data)
            return data

        def _get_file(key, local_path):
            get_file(key, local_path)
            count["file_requests"] += 1
            count["file_bytes"] += os.path.getsize(local_path)

        storage._get_bytes, storage._get_file = _get_bytes, _get_file
        return s, count

    # Ours: what Checkpoint().open(ref, "small.txt").read() does: read the manifest, then one
    # ranged read of the file's slice of its pack.
    s, count = counted_store()
    t0 = time.perf_counter()
    m = s.read(manifest.key)
    manifest_bytes = count["bytes"]
    with s.open(m, SMALL_NAME) as f:
        data = f.read()
    out["open"] = dict(count, seconds=time.perf_counter() - t0, manifest_bytes=manifest_bytes)
    if data != expected:
        raise RuntimeError("store.open(%s) returned wrong bytes" % SMALL_NAME)

    # Baseline: download the whole checkpoint (store.load), after the same preparation as
    # bench.py's loads (sync + memory recycling: it writes --size-mib of new files).
    dest = os.path.join(spec["workdir"], "load-%s" % spec["run"])
    prepare(recycle_size(manifest.size), spec["recycle"], spec["workdir"])
    s, count = counted_store()
    t0 = time.perf_counter()
    m = s.read(manifest.key)
    written = s.load(m, dest)
    out["load"] = dict(count, seconds=time.perf_counter() - t0, written=written)
    with open(os.path.join(dest, SMALL_NAME), "rb") as f:
        if f.read() != expected:
            raise RuntimeError("store.load wrote a wrong %s" % SMALL_NAME)
    remove(Path(dest))
    return out


def child_main(spec: dict) -> int:
    t0 = time.perf_counter()
    import metaflow  # noqa: F401 - import cost is reported apart from the timed calls
    from metaflow import Checkpoint  # noqa: F401

    import_seconds = time.perf_counter() - t0
    mode = spec["mode"]
    if mode in ("list", "best"):
        out = child_list(spec, best=mode == "best")
    elif mode in ("raw_list", "raw_get"):
        out = child_raw(spec, read_all=mode == "raw_get")
    elif mode == "open":
        out = child_open(spec)
    else:
        raise SystemExit("unknown mode %r" % mode)
    out["import_seconds"] = import_seconds
    print(json.dumps(out))
    return 0


# ===================================================================================== parent
def run_child(spec: dict, env: dict, cwd: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, cwd=str(cwd), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError("child %s failed (exit %d):\n%s" % (spec["mode"], proc.returncode, tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def browse(work: Path, tag: str, env: dict, args, top_args=()) -> dict:
    """Run the flow, then time the listings and the baselines in fresh processes."""
    out_file = work / ("flow-%s.json" % tag)
    env = dict(env, METAFLOW_RUN_CHECKPOINTS=str(args.checkpoints), MFCKPT_BENCH_OUT=str(out_file))
    t0 = time.perf_counter()
    run_flow(FLOW, env, work, top_args, logfile=work / ("flow-%s.log" % tag))
    flow = json.loads(out_file.read_text())
    flow["run_seconds"] = time.perf_counter() - t0
    log("%s: flow saved %d checkpoints in %.1f s" % (tag, flow["count"], flow["save_seconds"]))
    flow_name, run_id, step = flow["pathspec"].split("/")[:3]
    target = "%s/%s/%s" % (flow_name, run_id, step)
    base = {"root": flow["root"], "key": flow["key"], "target": target}
    res: dict = {"flow": flow, "target": target}
    for mode in ("raw_list", "raw_get", "cold", "warm", "best"):
        res[mode] = []
    for i in range(args.repeat):
        res["raw_list"].append(run_child(dict(base, mode="raw_list"), env, work))
        res["raw_get"].append(run_child(dict(base, mode="raw_get"), env, work))
        # Cold: the index is deleted first (untimed), so every repeat reads every manifest.
        res["cold"].append(run_child(dict(base, mode="list", drop_index=True), env, work))
        res["warm"].append(run_child(dict(base, mode="list"), env, work))
        res["best"].append(run_child(dict(base, mode="best"), env, work))
        log("%s: browse repeat %d/%d done" % (tag, i + 1, args.repeat))
    # Every listing must see every checkpoint and agree on the best one.
    for mode in ("raw_list", "raw_get", "cold", "warm"):
        for r in res[mode]:
            if r["count"] != args.checkpoints:
                raise RuntimeError("%s %s saw %d checkpoints" % (tag, mode, r["count"]))
    for mode in ("cold", "warm"):
        for r in res[mode]:
            if r["without_metadata"]:
                raise RuntimeError("%s %s: references without metadata" % (tag, mode))
    bests = {r["best_step"] for r in res["cold"] + res["warm"] + res["best"]}
    if len(bests) != 1:
        raise RuntimeError("%s: list and best disagree on the best step: %s" % (tag, bests))
    return res


def make_data(root: Path, size_mib: int) -> int:
    """16 random files of ``size_mib`` MiB in all, plus one random 4 KiB ``small.txt``."""
    nbytes = make_big(root, size_mib)
    with open(root / SMALL_NAME, "wb") as f:
        f.write(os.urandom(SMALL_SIZE))
    return nbytes + SMALL_SIZE


def open_bench(work: Path, tag: str, env: dict, root: str, src: Path, args) -> dict:
    spec = {
        "mode": "open",
        "root": root,
        "src": str(src),
        "run": "%s-%s" % (tag, uuid.uuid4().hex[:6]),
        "workdir": str(work),
        "recycle": not args.no_recycle,
    }
    res = run_child(spec, env, work)
    log("%s: 4 KiB read of a %s checkpoint done" % (tag, fmt_bytes(res["size"])))
    return res


# ------------------------------------------------------------------------------------- table
def secs(values) -> str:
    m = median(values)
    if m < 0.01:
        return "%.1f ms" % (1000 * m)
    return "%.0f ms" % (1000 * m) if m < 1 else "%.2f s" % m


def build_table(raw: dict, args) -> Table:
    t = Table()
    n = args.checkpoints
    for tag, label in (("local", "local"), ("s3", "S3 (moto)")):
        res = raw.get(tag)
        if res is None:
            continue
        limit = LIST_TARGET[tag]
        listing = [r["seconds"] for r in res["raw_list"]]
        naive = [r["seconds"] for r in res["raw_get"]]
        both = "listing %s; listing + %d manifest reads %s" % (secs(listing), n, secs(naive))
        rows = (
            ("cold", "first `list` of %d checkpoints, cold (reads manifests, writes index)", both),
            (
                "warm",
                "`list` of %d checkpoints, warm (summary index)",
                "listing %s" % secs(listing),
            ),
            ("best", '`best(metric="val_loss")` over %d checkpoints, warm', both),
        )
        for mode, what, baseline in rows:
            ours = [r["seconds"] for r in res[mode]]
            ref = naive if mode != "warm" else listing
            t.add(
                "%s %s" % (label, what % n),
                secs(ours),
                baseline,
                "%.1f× %s" % (median(ours) / median(ref), "naive" if mode != "warm" else "listing"),
                "< %g s" % limit,
                median(ours) < limit,
            )
    for tag, label in (("local", "local"), ("s3", "S3 (moto)")):
        res = raw.get("open_" + tag)
        if res is None:
            continue
        o, full = res["open"], res["load"]
        fetched = o["bytes"] + o["file_bytes"]
        whole = max(full["bytes"] + full["file_bytes"], full["written"])
        size = fmt_bytes(res["size"])
        t.add(
            "%s read one 4 KiB file of a %s checkpoint: bytes fetched" % (label, size),
            "%s in %d requests" % (fmt_bytes(fetched), o["requests"] + o["file_requests"]),
            "%s (store.load)" % fmt_bytes(whole),
            "%.3g×" % (fetched / whole),
            "< 1 MiB",
            fetched < BYTES_TARGET,
        )
        t.add(
            "%s read one 4 KiB file of a %s checkpoint: time" % (label, size),
            "%.1f ms" % (1000 * o["seconds"]),
            "%.2f s (store.load)" % full["seconds"],
            "%.3g×" % (o["seconds"] / full["seconds"]),
            "—",
        )
    return t


def _phases(runs: list) -> str:
    """``locate, listing (S3 client creation), summaries (index read, index write)``."""

    def phase(name: str) -> str:
        values = [r["phases"].get(name, 0.0) for r in runs]
        return secs(values) if any(values) else ""

    client = phase("S3 client creation (within listing)")
    index = ", ".join(
        "%s %s" % (k, v)
        for k, v in (("read", phase("index read")), ("write", phase("index write")))
        if v
    )
    reads = median([r["calls"].get("manifest reads", 0) for r in runs])
    return "locate %s, listing %s%s, summaries %s (index %s; %d manifest reads)" % (
        phase("locate"),
        phase("listing"),
        " (of which S3 client creation %s)" % client if client else "",
        phase("summaries"),
        index or "not read",
        reads,
    )


def print_report(raw: dict, table: Table, args) -> None:
    first = raw.get("local") or raw.get("s3")
    workers = first["raw_get"][0]["workers"]
    print(
        "metaflow-checkpointing browse benchmark: %d checkpoints of one step; one %s checkpoint "
        "(%d files + one 4 KiB file); %d CPUs; workers=%d; times are medians of %d fresh "
        "processes"
        % (
            args.checkpoints,
            fmt_bytes(args.size_mib * MiB),
            BIG_FILES,
            os.cpu_count() or 1,
            workers,
            args.repeat,
        )
    )
    print()
    print(table.markdown())
    print()

    def all_of(runs) -> str:
        return ", ".join("%.3f" % r["seconds"] for r in runs)

    notes = [
        "Each time is one call in a fresh Python process with the flow's environment; "
        "`import metaflow` (median %.2f s) happens before the clock starts, creating the "
        "storage client and locating the run (Metaflow client, local metadata) are inside it."
        % median(
            [r["import_seconds"] for tag in ("local", "s3") if tag in raw for r in raw[tag]["warm"]]
        ),
    ]
    for tag, label in (("local", "Local"), ("s3", "S3")):
        res = raw.get(tag)
        if res is None:
            continue
        flow = res["flow"]
        cold = res["cold"][0]
        notes.append(
            "%s: the flow saved %d checkpoints in %.1f s (median save %.1f ms; `run` %.1f s). "
            "Index before the first cold list: %s; written by it: %s (%s). All runs (s): "
            "listing %s; listing + reads %s; cold %s; warm %s; best %s."
            % (
                label,
                flow["count"],
                flow["save_seconds"],
                1000 * flow["save_median"],
                flow["run_seconds"],
                "present" if cold["index_before"] else "absent",
                "yes" if cold["index_after"] else "NO",
                fmt_bytes(cold.get("index_bytes", 0)),
                all_of(res["raw_list"]),
                all_of(res["raw_get"]),
                all_of(res["cold"]),
                all_of(res["warm"]),
                all_of(res["best"]),
            )
        )
        notes.append(
            "%s phases (medians): cold: %s; warm: %s; best: %s."
            % (label, _phases(res["cold"]), _phases(res["warm"]), _phases(res["best"]))
        )
        if tag == "s3":
            notes.append(
                "S3 baselines: one boto3 client (created before the clock, %.0f ms), "
                "`list_objects_v2` paginator; GETs on a thread pool of %d workers. Ours "
                "creates its client inside the timed call."
                % (1000 * median([r["client_seconds"] for r in res["raw_get"]]), workers)
            )
        best = res["best"][0]
        notes.append(
            "%s best: step %s, val_loss %s (the same in every list and best call)."
            % (label, best["best_step"], best["best_val_loss"])
        )
    for tag, label in (("local", "Local"), ("s3", "S3")):
        res = raw.get("open_" + tag)
        if res is None:
            continue
        o, full = res["open"], res["load"]
        notes.append(
            "%s 4 KiB read: manifest %s + file %s (ranged read of its pack) in %d requests; "
            "the checkpoint (%d files, %s) was saved in %.2f s; store.load wrote %s in %.2f s "
            "(%s fetched through the backend's get_bytes%s)."
            % (
                label,
                fmt_bytes(o["manifest_bytes"]),
                fmt_bytes(o["bytes"] - o["manifest_bytes"]),
                o["requests"] + o["file_requests"],
                res["files"],
                fmt_bytes(res["size"]),
                res["save_seconds"],
                fmt_bytes(full["written"]),
                full["seconds"],
                fmt_bytes(full["bytes"] + full["file_bytes"]),
                "; locally blob files are copied in the kernel, not read" if tag == "local" else "",
            )
        )
    notes.append(
        "Total benchmark time: %.0f s. Load average (1/5/15 min) at start %s, at end %s: "
        "anything else running on the machine slows moto and the listings alike."
        % (
            raw["total_seconds"],
            "/".join("%.2f" % x for x in raw["loadavg_start"]),
            "/".join("%.2f" % x for x in raw["loadavg_end"]),
        )
    )
    for line in notes:
        print("- " + line)


# ------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=1000, help="checkpoints of the step")
    p.add_argument("--size-mib", type=int, default=1024, help="size of the big checkpoint")
    p.add_argument("--repeat", type=int, default=3, help="fresh processes per listing (medians)")
    p.add_argument("--skip-s3", action="store_true", help="local rows only (no moto server)")
    p.add_argument("--workdir", help="parent of the temporary directory (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--no-recycle", action="store_true", help="no memory recycling before loads")
    p.add_argument("--json", help="also write every raw measurement to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.checkpoints < 1 or args.size_mib < 1 or args.repeat < 1:
        p.error("--checkpoints, --size-mib and --repeat must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mfckpt-browse-", dir=args.workdir or None)).resolve()
    t_start = time.perf_counter()
    raw: dict = {"args": vars(args), "workdir": str(work), "loadavg_start": os.getloadavg()}
    moto = None
    try:
        log("work dir %s" % work)
        src = work / "data" / "big"
        make_data(src, args.size_mib)
        os.sync()
        log("data: %s in %d files + one 4 KiB file" % (fmt_bytes(args.size_mib * MiB), BIG_FILES))

        env = flow_environment(work)
        raw["local"] = browse(work, "local", env, args)
        raw["open_local"] = open_bench(work, "local", env, raw["local"]["flow"]["root"], src, args)
        remove(work / "mf-local" / ".metaflow" / "mf.checkpointing")  # free disk and cache

        if not args.skip_s3:
            os.environ.update(S3_ENV)
            moto = MotoServer(work / "moto.log")
            log("moto server on %s" % moto.endpoint)
            bucket = "mfckpt-browse-%s" % uuid.uuid4().hex[:8]
            s3_client(moto.endpoint, 10).create_bucket(Bucket=bucket)
            s3env = flow_environment(work, METAFLOW_S3_ENDPOINT_URL=moto.endpoint, **S3_ENV)
            top = ("--datastore=s3", "--datastore-root", "s3://%s/mf" % bucket)
            raw["s3"] = browse(work, "s3", s3env, args, top)
            root = raw["s3"]["flow"]["root"]
            raw["open_s3"] = open_bench(work, "s3", s3env, root, src, args)
    finally:
        if moto is not None:
            moto.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            remove(work)
    raw["total_seconds"] = time.perf_counter() - t_start
    raw["loadavg_end"] = os.getloadavg()

    table = build_table(raw, args)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    print()
    print_report(raw, table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
