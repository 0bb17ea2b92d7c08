"""Cost of the local tier's cleanup (``core/tier_cleanup.py``, docs/upload.md "Cleanup").

Builds a tier of ``--checkpoints`` checkpoints of ``--files`` distinct 64 KiB files each (1,000
blobs by default) in a temporary directory, then times: a collection with nothing to delete,
removing all checkpoints but one, the collection that deletes their blobs, and a start sweep
with nothing old.  Prints one line per measurement; ``--repeat`` runs it several times.

    .venv/bin/python benchmarks/bench_tier_cleanup.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

import metaflow  # noqa: F401  (the extension's package)

from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier as T
from metaflow_extensions.checkpointing.plugins.checkpointing.core import tier_cleanup as C
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage


def once(checkpoints: int, files: int) -> None:
    work = tempfile.mkdtemp(prefix="bench-tier-cleanup-")
    try:
        opts = TransferOptions(chunk_size=64 << 10, small_size=0, workers=8)
        remote = CheckpointStore(LocalStorage(os.path.join(work, "remote")), opts)
        tier = T.open_tier(remote, os.path.join(work, "base"))
        keys = []
        for i in range(checkpoints):
            src = os.path.join(work, "s%d" % i)
            os.makedirs(src)
            for j in range(files):
                with open(os.path.join(src, "f%d" % j), "wb") as f:
                    f.write(random.Random(i * 1000 + j).randbytes(64 << 10))
            scope = Scope("user:a", "F", "train", "_", "1", str(i % 5), 0)
            keys.append(tier.save(src, scope).key)
        blobs = len(list(tier.storage.list("blobs/")))
        t = time.perf_counter()
        nothing = C.collect(tier).blobs_deleted
        t_nothing = time.perf_counter() - t
        t = time.perf_counter()
        C.remove(tier, keys[:-1])
        t_remove = time.perf_counter() - t
        t = time.perf_counter()
        deleted = C.collect(tier).blobs_deleted
        t_collect = time.perf_counter() - t
        t = time.perf_counter()
        C.sweep(tier, 7 * 86400.0)
        t_sweep = time.perf_counter() - t
        print(
            "tier of %d blobs: collect deleting %d %.3f s; remove %d checkpoints %.3f s; "
            "collect deleting %d %.3f s; sweep %.3f s"
            % (blobs, nothing, t_nothing, len(keys) - 1, t_remove, deleted, t_collect, t_sweep)
        )
        tier.close()
        remote.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=100)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.repeat):
        once(args.checkpoints, args.files)


if __name__ == "__main__":
    main()
