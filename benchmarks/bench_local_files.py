"""Local saves and loads of small files and single files against ``cp -r`` of the same bytes.

    python benchmarks/bench_local_files.py            # 5 cases, 5 repeats, store level
    python benchmarks/bench_local_files.py --quick    # 3 small cases, 3 repeats (~1 minute)
    python benchmarks/bench_local_files.py --flow     # also through a real flow (bench_flow.py)

Cases (random bytes, written once before any timing, page cache warm for everyone):

* ``256 x 256 KiB``: 64 MiB in 256 files (packed: files under 1 MiB share blobs);
* ``10000 x 4 KiB``: 40 MiB in 10,000 files;
* ``1 x 256 MiB`` and ``1 x 4 GiB`` (not with ``--quick``): one file, split into chunks;
* ``16 x 64 MiB`` (not with ``--quick``): the 1 GiB of ``bench.py`` and the head-to-head, at
  the store level (what their rows cost without a task around them).

Each repeat runs, interleaved and each after ``_benchutil.prepare`` (``sync`` and memory
recycling, as ``bench.py``): ``cp -r src dst``; ``CheckpointStore.save(src)`` into a fresh
local store with the options a task uses (``common.settings.transfer_options``), every byte
read and hashed (BLAKE3); a load of that checkpoint by a fresh store (a new process's view:
nothing cached) into a new directory through ``core.loading.load``, what ``Checkpoint().load``
and ``current.checkpoint.load`` run.  What a timed operation wrote is moved aside, not deleted,
until the end (``_benchutil.discard``: ext4 without a journal).  The table shows medians of
wall time and of CPU time (user + system, our process or cp's), and ``cp / ours`` of the wall times
(the target is >= 0.8).  CPU time is the steadier figure on a shared machine: wall time
depends on what else runs, CPU time mostly on the work done.

``--json FILE`` keeps every measurement ((wall, cpu) pairs per case and contender).
``--flow`` also runs ``bench_flow.py`` (``current.checkpoint.save(path=...)`` and ``load``
in real Metaflow tasks, ``bench.py``'s machinery) on the same directories.  Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _benchutil import MiB, discard, ext4_workdir, prepare, recycle_size  # noqa: E402

KiB = 1 << 10
#: name -> (number of files, bytes per file, in --quick)
CASES = {
    "256 x 256 KiB": (256, 256 * KiB, True),
    "10000 x 4 KiB": (10000, 4 * KiB, True),
    "1 x 256 MiB": (1, 256 * MiB, True),
    "1 x 4 GiB": (1, 4096 * MiB, False),
    # The shape of bench.py's and the head-to-head's 1 GiB rows.
    "16 x 64 MiB": (16, 64 * MiB, False),
}


def log(msg: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def make_case(root: Path, count: int, size: int) -> None:
    """``count`` files of ``size`` random bytes under ``root``."""
    root.mkdir(parents=True)
    block = 8 * MiB
    for i in range(count):
        with open(root / ("f%05d.bin" % i), "wb") as f:
            left = size
            while left:
                n = min(block, left)
                f.write(os.urandom(n))
                left -= n


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, nbytes: int, recycle: bool, scratch: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()`` after ``prepare``."""
    prepare(recycle_size(nbytes), recycle, str(scratch))
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def store_round(src: Path, scratch: Path, recycle: bool) -> dict:
    """One save into a fresh local store and one load of it by a fresh store."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        transfer_options,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (
        CheckpointStore,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
        LocalStorage,
    )

    nbytes = tree_bytes(src)
    root = scratch / ("store-" + uuid.uuid4().hex[:8])
    store = CheckpointStore(LocalStorage(str(root)), transfer_options())
    scope = Scope("user:bench", "Bench", "train", "_", "1", "1", 0)
    out: dict = {}
    try:
        box = {}
        out["save"] = timed(
            lambda: box.update(m=store.save(str(src), scope)), nbytes, recycle, scratch
        )
        out["phases"] = box["m"].stats.get("seconds", {})
        fresh = CheckpointStore(LocalStorage(str(root)), transfer_options())
        manifest = fresh.read(box["m"].key)
        dest = scratch / "load"
        # loading.load: what Checkpoint().load and current.checkpoint.load run.
        out["load"] = timed(
            lambda: loading.load(fresh, manifest, str(dest)), nbytes, recycle, scratch
        )
        if tree_bytes(dest) != nbytes:
            raise RuntimeError(
                "the load of %s wrote %d bytes, not %d" % (src, tree_bytes(dest), nbytes)
            )
        discard(str(dest), str(scratch))
        fresh.close()
    finally:
        store.close()
        discard(str(root), str(scratch))
    return out


def cp_round(src: Path, scratch: Path, recycle: bool) -> tuple[float, float]:
    dst = scratch / "cp"
    try:
        return timed(
            lambda: subprocess.run(["cp", "-r", str(src), str(dst)], check=True),
            tree_bytes(src),
            recycle,
            scratch,
        )
    finally:
        discard(str(dst), str(scratch))


def tree_bytes(root: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(d, n)) for d, _dirs, names in os.walk(root) for n in names
    )


def flow_rounds(work: Path, sources: dict, recycle: bool) -> dict:
    """Save and load every case through ``bench_flow.py`` (real tasks); case -> (save, load)."""
    from bench import flow_environment, run_bench_flow

    names = list(sources)
    args = SimpleNamespace(latency_saves=0, no_recycle=not recycle)
    raw = run_bench_flow(
        work,
        "local-files",
        {"big": [sources[n] for n in names], "small": []},
        args,
        flow_environment(work),
    )
    big = raw["big"]
    return {n: (big["save"][i]["seconds"], big["load"][i]["seconds"]) for i, n in enumerate(names)}


def fmt(seconds: float) -> str:
    return "%.3f s" % seconds if seconds < 10 else "%.1f s" % seconds


def table(results: dict, flow: dict) -> str:
    med = statistics.median
    rows = [
        "| case | cp -r wall (cpu) | save wall (cpu) | cp/save | load wall (cpu) | cp/load |"
        + (" flow save | flow load |" if flow else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if flow else ""),
    ]
    for name, res in results.items():
        cp_w, cp_c = med(w for w, _ in res["cp"]), med(c for _, c in res["cp"])
        sv_w, sv_c = med(w for w, _ in res["save"]), med(c for _, c in res["save"])
        ld_w, ld_c = med(w for w, _ in res["load"]), med(c for _, c in res["load"])
        row = "| %s | %s (%s) | %s (%s) | %.2fx | %s (%s) | %.2fx |" % (
            name,
            fmt(cp_w),
            fmt(cp_c),
            fmt(sv_w),
            fmt(sv_c),
            cp_w / sv_w,
            fmt(ld_w),
            fmt(ld_c),
            cp_w / ld_w,
        )
        if flow:
            fs, fl = flow.get(name, (float("nan"), float("nan")))
            row += " %s (%.2fx) | %s (%.2fx) |" % (fmt(fs), cp_w / fs, fmt(fl), cp_w / fl)
        rows.append(row)
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="no 4 GiB case, 3 repeats")
    p.add_argument("--repeat", type=int, help="rounds per case (default 5, 3 with --quick)")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--flow", action="store_true", help="also save/load through a real flow")
    p.add_argument("--no-recycle", action="store_true", help="no memory recycling (_benchutil)")
    p.add_argument("--workdir", help="parent of the temporary directory")
    p.add_argument(
        "--ext4-image",
        type=int,
        metavar="GIB",
        help="work in a fresh journaled ext4 of GIB GiB, loop-mounted (root; _benchutil)",
    )
    p.add_argument("--json", help="also write every measurement to this file")
    args = p.parse_args(argv)
    with ext4_workdir(args):  # a fresh journaled ext4 with --ext4-image (_benchutil)
        return run(args)


def run(args) -> int:
    repeat = args.repeat or (3 if args.quick else 5)
    recycle = not args.no_recycle
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases else None
    cases = {
        n: c
        for n, c in CASES.items()
        if (wanted is None and (c[2] or not args.quick)) or (wanted is not None and n in wanted)
    }
    work = Path(tempfile.mkdtemp(prefix="mfckpt-bench-files-", dir=args.workdir)).resolve()
    results: dict = {}
    flow: dict = {}
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        sources = {}
        for i, (name, (count, size, _quick)) in enumerate(cases.items()):
            sources[name] = work / "data" / ("case-%d" % i)
            make_case(sources[name], count, size)
        os.sync()
        log("data written under %s; load average %s" % (work, os.getloadavg()))
        for name, src in sources.items():
            res = results[name] = {"cp": [], "save": [], "load": [], "phases": []}
            for r in range(repeat):
                # Alternate who goes first, so that drifts hit both alike.
                first_cp = r % 2 == 0
                if first_cp:
                    res["cp"].append(cp_round(src, scratch, recycle))
                ours = store_round(src, scratch, recycle)
                if not first_cp:
                    res["cp"].append(cp_round(src, scratch, recycle))
                res["save"].append(ours["save"])
                res["load"].append(ours["load"])
                res["phases"].append(ours["phases"])
            log("%s done" % name)
        if args.flow:
            flow = flow_rounds(work, sources, recycle)
            log("flow done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results, flow))
    if args.json:
        raw = {"args": vars(args), "repeat": repeat, "cases": results, "flow": flow}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    print()
    print("Load average at the end: %s. Phases of the median save (s):" % (os.getloadavg(),))
    for name, res in results.items():
        order = sorted(range(len(res["save"])), key=lambda i: res["save"][i][0])
        print("- %s: %s" % (name, res["phases"][order[len(order) // 2]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
