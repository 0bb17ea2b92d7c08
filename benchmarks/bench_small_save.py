"""The floor under a 4 KiB save: what its durable writes cost before any of our code runs.

    python benchmarks/bench_small_save.py                    # 300 rounds in the temp dir
    python benchmarks/bench_small_save.py --ext4-image 2     # in a fresh journaled ext4 (root)

The head-to-head's 4 KiB row holds a save to twice the reference's speed.  A save of ours
commits a content-addressed blob and a manifest, each written to a temp name and renamed (a
reader never sees a torn object), and writes the task's metrics-log entry in place (its
readers skip an entry that does not parse: ``Storage.put_new``, ADR 009).  Each round,
interleaved and on new random bytes, times in one process:

* ``floor``: read the 4 KiB file, then two atomic writes (create a temp file exclusively,
  write, close, rename) of a blob and a manifest-sized object and one exclusive create of a
  metrics-sized one: the syscalls of a save, in plain Python, with no hashing, scanning, JSON
  or bookkeeping;
* ``one write``: one such atomic write of the 4 KiB;
* ``copytree``: ``shutil.copytree`` of the directory holding the file (the local raw baseline
  of the head-to-head's 4 KiB row);
* ``store save``: ``CheckpointStore.save`` of the directory into a local store, with the
  options a task uses (``common.settings.transfer_options``), named as the head-to-head names
  it; no metrics-log entry (the task adds it) and no task around it.

Prints medians and minima in milliseconds.  Nothing asserts; see benchmarks/README.md,
"A 4 KiB save: the floor of its writes".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _benchutil import ext4_workdir  # noqa: E402

KiB = 1 << 10


def _atomic(directory: str, name: str, data: bytes) -> None:
    tmp = os.path.join(directory, ".tmp-" + name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))


def _in_place(directory: str, name: str, data: bytes) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def run(args) -> int:
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

    work = tempfile.mkdtemp(prefix="small-save-", dir=args.workdir)
    try:
        dirs = {d: os.path.join(work, d) for d in ("src", "blobs", "manifests", "metrics", "cp")}
        for d in dirs.values():
            os.makedirs(d)
        src = os.path.join(dirs["src"], "state.bin")
        store = CheckpointStore(LocalStorage(os.path.join(work, "store")), transfer_options())
        scope = Scope("user:bench", "Bench", "train", "_", "1", "1", 0)
        manifest_body = json.dumps({"files": [{"path": "state.bin"}] * 12}).encode() * 2
        metrics_body = b'{"format": "metrics", "metrics": {}, "best": []}'
        times: dict[str, list[float]] = {
            "floor": [],
            "one write": [],
            "copytree": [],
            "store save": [],
        }
        for i in range(args.rounds):
            with open(src, "wb") as f:
                f.write(os.urandom(4 * KiB))
            t0 = time.perf_counter()
            with open(src, "rb") as f:
                data = f.read()
            _atomic(dirs["blobs"], "b%d" % i, data)
            _atomic(dirs["manifests"], "m%d" % i, manifest_body)
            _in_place(dirs["metrics"], "x%d" % i, metrics_body)
            t1 = time.perf_counter()
            _atomic(dirs["blobs"], "c%d" % i, data)
            t2 = time.perf_counter()
            shutil.copytree(dirs["src"], os.path.join(dirs["cp"], str(i)))
            t3 = time.perf_counter()
            store.save(dirs["src"], scope, name="tiny")
            t4 = time.perf_counter()
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(seconds)
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    warm = args.rounds // 10  # the first rounds create directories and warm caches
    print("| step | median | min |")
    print("|---|---:|---:|")
    for key, values in times.items():
        kept = values[warm:]
        print("| %s | %.3f ms | %.3f ms |" % (key, statistics.median(kept) * 1e3, min(kept) * 1e3))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="rounds (default 300)")
    parser.add_argument("--workdir", default=None, help="parent of the temporary directory")
    parser.add_argument(
        "--ext4-image",
        type=int,
        default=0,
        metavar="GIB",
        help="work in a fresh journaled ext4 of GIB GiB, loop-mounted (root; _benchutil)",
    )
    args = parser.parse_args(argv)
    with ext4_workdir(args):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
