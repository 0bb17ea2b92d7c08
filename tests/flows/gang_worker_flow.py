"""Subprocess ranks in @parallel nodes and in a single task: each step starts its workers as
torchrun would (RANK/LOCAL_RANK/WORLD_SIZE set; plain ``python gang_worker.py``, no torch), the
workers save through ``Checkpoint(init_dir=True)``, every step crashes once on attempt 0 and the
retry records what each step and each worker loaded.

``--savers rank0``: worker RANK 0 alone saves (the usual ``if rank == 0: save()``), then node 0's
step alone saves the final model (``name="final"``).  ``--savers every``: every worker saves its
own state, and the single-task ``start`` step also runs two workers (RANK 0/1, LOCAL_RANK 0/1,
WORLD_SIZE 2) on one machine.  ``--sync`` is a directory every process sees (local runs), for
the barriers after loading (see ``gang_sync.py``).
"""

import json
import os
import subprocess
import sys
import tempfile

from gang_sync import barrier
from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, retry, step

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gang_worker.py")
EPOCHS = 4
CRASH_AFTER = 1


def run_workers(savers: str, ranks: list, world: int, node: int, sync: str) -> dict:
    """Start one worker per ``(RANK, LOCAL_RANK)`` as torchrun does on node ``node``; wait for
    them; their reports by RANK.  On attempt 0 every worker crashes after epoch CRASH_AFTER."""
    out = tempfile.mkdtemp()
    procs = {}
    for rank, local_rank in ranks:
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(local_rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(len(ranks)),
            GROUP_RANK=str(node),
            TORCHELASTIC_RESTART_COUNT="0",
        )
        args = [sys.executable, WORKER, "--savers", savers, "--epochs", str(EPOCHS)]
        args += ["--sync", sync, "--report", os.path.join(out, "%d.json" % rank)]
        if current.retry_count == 0:
            args += ["--crash-after", str(CRASH_AFTER)]
        procs[rank] = subprocess.Popen(args, env=env)
    codes = {rank: p.wait() for rank, p in procs.items()}
    reports = {}
    for rank in procs:
        with open(os.path.join(out, "%d.json" % rank)) as f:
            reports[rank] = json.load(f)
    if current.retry_count == 0:
        assert all(codes.values()), "every worker crashes on attempt 0: %s" % codes
        raise RuntimeError("node %d: workers failed with %s" % (node, codes))
    assert not any(codes.values()), codes
    return reports


def step_loaded() -> dict:
    """What the step's own process loaded when it started (this node's view)."""
    if not current.checkpoint.is_loaded:
        return {"key": None, "content": None}
    with open(os.path.join(current.checkpoint.directory, "state.txt")) as f:
        return {"key": current.checkpoint.info.key, "content": f.read()}


class GangWorkerFlow(FlowSpec):
    savers = Parameter("savers", default="rank0", help="rank0 or every")
    sync = Parameter("sync", required=True, help="A directory every process sees.")

    @checkpoint
    @retry(times=1)
    @step
    def start(self):
        self.single = None
        if self.savers == "every":  # one task, two workers on one machine
            self.single = {"step": step_loaded()}
            sync = os.path.join(self.sync, "start-workers-%d" % current.retry_count)
            self.single["workers"] = run_workers("every", [(0, 0), (1, 1)], 2, 0, sync)
        self.next(self.train, num_parallel=2)

    @checkpoint
    @retry(times=1)
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        self.node = node
        self.attempt = current.retry_count
        self.step_loaded = step_loaded()
        barrier(os.path.join(self.sync, "train-%d" % self.attempt), node, 2)
        # One worker per node: RANK = node index, LOCAL_RANK 0 (the node's leader).
        sync = os.path.join(self.sync, "train-workers-%d" % self.attempt)
        world = current.parallel.num_nodes
        self.worker = run_workers(self.savers, [(node, 0)], world, node, sync)[node]
        self.final = None
        if self.savers == "rank0" and node == 0:  # the trained model, from node 0's step alone
            with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
                f.write("trained model")
            ref = current.checkpoint.save(name="final", metadata={"epochs": EPOCHS})
            self.final = (ref.key, ref.get("writer"))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.by_node = {
            i.node: {
                "attempt": i.attempt,
                "step": i.step_loaded,
                "worker": i.worker,
                "final": i.final,
            }
            for i in inputs
        }
        self.single = inputs[0].single
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GangWorkerFlow()
