"""Local loads against ``cp -r`` of the same bytes (issue 18 item 1, the load side).

    python benchmarks/bench_local_loads.py                 # 4 cases, 5 repeats
    python benchmarks/bench_local_loads.py --quick         # smaller cases, 3 repeats
    python benchmarks/bench_local_loads.py --profile "256 x 256 KiB"   # cProfile of one load

Cases (random bytes, written once; saved once into a local store with the options a task uses,
``common.settings.transfer_options``):

* ``16 x 16 MiB`` (256 MiB; one blob per file), ``1 x 256 MiB`` (16 chunks of one file);
* ``256 x 256 KiB`` (64 MiB packed: files under 1 MiB share blobs), ``10000 x 4 KiB``.

Each repeat times, interleaved and each after ``_benchutil.prepare`` (``sync`` and memory
recycling, as ``bench.py``): ``cp -r`` of the source directory, and a load by a fresh store (a
new process's view) into a new directory through ``core.loading.load`` (what
``Checkpoint().load`` and ``current.checkpoint.load`` run): every stored blob hashed (BLAKE3)
before its bytes count.  What a timed operation wrote is moved aside until the end
(``_benchutil.discard``: ext4 without a journal).  Page cache warm for both (as after a
save).  The table shows medians of wall and CPU time and ``cp / load`` of the wall times
(issue 18's target: >= 0.8).
``--json FILE`` keeps every measurement.  Nothing asserts; see benchmarks/README.md,
"Local loads at disk speed".
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _benchutil import MiB, discard, prepare, recycle_size  # noqa: E402
from bench_local_files import log, make_case, timed  # noqa: E402

KiB = 1 << 10
#: name -> (files, bytes per file, in --quick as (files, bytes))
CASES = {
    "16 x 16 MiB": (16, 16 * MiB, (16, 4 * MiB)),
    "1 x 256 MiB": (1, 256 * MiB, (1, 64 * MiB)),
    "256 x 256 KiB": (256, 256 * KiB, (256, 256 * KiB)),
    "10000 x 4 KiB": (10000, 4 * KiB, (2000, 4 * KiB)),
}


def tree_bytes(root: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(d, n)) for d, _dirs, names in os.walk(root) for n in names
    )


def saved(src: Path, root: Path):
    """Save ``src`` into a local store at ``root``; return (store factory, manifest key)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        transfer_options,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (
        CheckpointStore,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
        LocalStorage,
    )

    def fresh():
        return CheckpointStore(LocalStorage(str(root)), transfer_options())

    store = fresh()
    try:
        key = store.save(str(src), Scope("user:bench", "Bench", "train", "_", "1", "1", 0)).key
    finally:
        store.close()
    return fresh, key


def baseline_download(tree: str):
    """``download_tree`` of ``core/download.py``, ``core/download_local.py`` (where the tree has
    it) and ``core/destination.py`` of another checkout ``tree`` (e.g. ``git worktree add
    --detach /tmp/base HEAD~1``), loaded beside ours: timed interleaved with the current code
    in one process, for before/after figures."""
    import importlib.util

    core = "metaflow_extensions.checkpointing.plugins.checkpointing.core"
    base = Path(tree) / core.replace(".", "/")
    mods = {}
    for name in ("destination", "download_local", "download"):
        if not (base / (name + ".py")).exists():
            continue  # download_local.py split out of download.py later
        text = (base / (name + ".py")).read_text()
        for dep in ("destination", "download_local"):
            text = text.replace("from .%s import" % dep, "from ._baseline_%s import" % dep)
        spec = importlib.util.spec_from_loader("%s._baseline_%s" % (core, name), loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = core
        sys.modules[spec.name] = mod
        exec(compile(text, str(base / (name + ".py")), "exec"), mod.__dict__)
        mods[name] = mod
    return mods["download"].download_tree


def load_round(fresh, key, dest, nbytes, recycle, scratch, download=None):
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading

    store = fresh()
    try:
        manifest = store.read(key)
        if download is None:  # what Checkpoint().load and current.checkpoint.load run
            out = timed(lambda: loading.load(store, manifest, str(dest)), nbytes, recycle, scratch)
        else:  # the baseline's download_tree, as CheckpointStore.load calls it
            out = timed(
                lambda: download(store.storage, manifest, str(dest), store.options),
                nbytes,
                recycle,
                scratch,
            )
    finally:
        store.close()
    if tree_bytes(dest) != nbytes:
        raise RuntimeError("the load wrote %d bytes, not %d" % (tree_bytes(dest), nbytes))
    discard(str(dest), str(scratch))
    return out


def cp_round(src: Path, dest: Path, nbytes: int, recycle: bool, scratch: Path):
    try:
        return timed(
            lambda: subprocess.run(["cp", "-r", str(src), str(dest)], check=True),
            nbytes,
            recycle,
            scratch,
        )
    finally:
        discard(str(dest), str(scratch))


def fmt(s: float) -> str:
    return "%.3f s" % s


def table(results: dict) -> str:
    med = statistics.median
    base = any("baseline" in res for res in results.values())
    lines = [
        "| case | cp -r wall (cpu) | load wall (cpu) | cp / load | load MB/s |"
        + (" baseline wall (cpu) | cp / baseline |" if base else ""),
        "|---|---|---|---|---|" + ("---|---|" if base else ""),
    ]
    for name, res in results.items():
        row = "| %s (%d MiB) |" % (name, res["bytes"] >> 20)
        for what in ("cp", "load", "baseline") if base else ("cp", "load"):
            w, c = med(x[0] for x in res[what]), med(x[1] for x in res[what])
            row += " %s (%s) |" % (fmt(w), fmt(c))
            if what != "cp":
                ratios = [a[0] / b[0] for a, b in zip(res["cp"], res[what])]
                row += " %.2f |" % med(ratios)
            if what == "load":
                row += " %.0f |" % (res["bytes"] / w / 1e6)
        lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller cases, 3 repeats")
    p.add_argument("--repeat", type=int, default=None, help="repeats (default 5, quick 3)")
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--json", metavar="FILE", help="write every measurement here")
    p.add_argument("--no-recycle", action="store_true", help="no memory recycling")
    p.add_argument("--profile", metavar="CASE", help="cProfile one load of CASE, print top 25")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    p.add_argument(
        "--baseline",
        metavar="TREE",
        help="also time the load code of another checkout (before/after figures)",
    )
    args = p.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    recycle = not args.no_recycle
    names = [n for n in CASES if not args.only or n in args.only.split(",")]
    if args.profile:
        names = [args.profile]
    work = Path(tempfile.mkdtemp(prefix="bench-loads-", dir=args.dir))
    results: dict = {}
    base = baseline_download(args.baseline) if args.baseline else None
    try:
        for name in names:
            count, size, small = CASES[name]
            if args.quick:
                count, size = small
            src = work / name.replace(" ", "") / "src"
            make_case(src, count, size)
            nbytes = count * size
            fresh, key = saved(src, work / name.replace(" ", "") / "store")
            dest = work / name.replace(" ", "") / "dest"
            if args.profile:
                load_round(fresh, key, dest, nbytes, recycle, work)  # warm
                store = fresh()
                manifest = store.read(key)
                prof = cProfile.Profile()
                prepare(recycle_size(nbytes), recycle, str(work))
                prof.enable()
                store.load(manifest, str(dest))
                prof.disable()
                store.close()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
                pstats.Stats(prof).sort_stats("tottime").print_stats(15)
                return 0
            res = results[name] = {"bytes": nbytes, "files": count, "cp": [], "load": []}
            common = (dest, nbytes, recycle, work)
            contenders = [
                ("cp", partial(cp_round, src, *common)),
                ("load", partial(load_round, fresh, key, *common)),
            ]
            if base is not None:
                res["baseline"] = []
                contenders.append(("baseline", partial(load_round, fresh, key, *common, base)))
            for r in range(repeat):
                for what, fn in contenders if r % 2 == 0 else reversed(contenders):
                    res[what].append(fn())
            log("%s: %s" % (name, {k: v for k, v in res.items() if isinstance(v, list)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "Local loads vs cp -r, medians of %d (load average %.1f at the end)"
        % (repeat, os.getloadavg()[0])
    )
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeat": repeat, "quick": args.quick, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
