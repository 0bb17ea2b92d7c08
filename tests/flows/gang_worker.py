"""A torchrun-style worker without torch: its rank comes from RANK/LOCAL_RANK/WORLD_SIZE as torchrun
sets them.  It resumes from ``Checkpoint().load("last")`` when there is a checkpoint, "trains"
the remaining epochs saving through ``Checkpoint(init_dir=True)`` (rank 0 alone with ``--savers
rank0``, every rank with ``--savers every``), and may crash after an epoch's save.  After loading,
the workers meet at a barrier in ``--sync`` (as ``torch.distributed`` code does before its first
collective).  What it loaded and saved is written as JSON to ``--report``.

    python gang_worker.py --savers rank0 --epochs 4 --sync DIR --report out.json [--crash-after 1]
"""

import argparse
import json
import os

from gang_sync import barrier
from metaflow import Checkpoint

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointNotFound


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--savers", choices=("rank0", "every"), required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--crash-after", type=int, default=None)
    p.add_argument("--sync", required=True)
    p.add_argument("--report", required=True)
    args = p.parse_args()
    rank = int(os.environ["RANK"])
    saves = args.savers == "every" or rank == 0
    report = {
        "rank": rank,
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
        "loaded": None,
        "saved": [],
    }
    with Checkpoint(init_dir=True) as ckpt:
        state = os.path.join(ckpt.directory, "state.txt")
        first = 0
        try:
            with open(os.path.join(ckpt.load("last"), "state.txt")) as f:
                report["loaded"] = f.read()
            first = int(report["loaded"].rsplit(" ", 1)[1]) + 1
        except CheckpointNotFound:
            pass  # nothing saved yet: start from scratch
        barrier(args.sync, rank, report["world_size"])
        for epoch in range(first, args.epochs):
            if saves:
                with open(state, "w") as f:
                    f.write("rank %d epoch %d" % (rank, epoch))
                ref = ckpt.save(metadata={"epoch": epoch, "rank": rank})
                report["saved"].append((ref.key, ref.get("writer")))
            if epoch == args.crash_after:
                _write(args.report, report)
                raise RuntimeError("rank %d crashes after epoch %d" % (rank, epoch))
    _write(args.report, report)


def _write(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
