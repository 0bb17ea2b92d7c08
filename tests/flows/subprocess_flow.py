"""Child processes of a @checkpoint task save into the task with `Checkpoint()`: two writers at
once (like torchrun ranks), each from its own `init_dir` directory; then the attempt fails and
the retry loads the newest of their checkpoints."""

import os
import subprocess
import sys

from metaflow import Checkpoint, FlowSpec, checkpoint, current, retry, step

CHILD = r"""
import os, sys
from metaflow import Checkpoint

rank = int(sys.argv[1])
with Checkpoint(init_dir=True) as ckpt:
    for i in range(3):
        with open(os.path.join(ckpt.directory, "rank%d.txt" % rank), "w") as f:
            f.write("%d:%d" % (rank, i))
        ref = ckpt.save(metadata={"rank": rank, "i": i}, name="rank%d" % rank)
    mine = [r.metadata["i"] for r in ckpt.list(name="rank%d" % rank)]
    print("CHILD%d %s %s" % (rank, ref.pathspec, mine))
"""


def callback_without_current(step_no):
    """Framework code that never sees `current`."""
    ckpt = Checkpoint()
    with open(os.path.join(ckpt.directory, "callback.txt"), "w") as f:
        f.write(str(step_no))
    return ckpt.save(metadata={"from": "callback", "step": step_no})


class SubprocessFlow(FlowSpec):
    @checkpoint
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0:
            children = [
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, str(rank)], stdout=subprocess.PIPE, text=True
                )
                for rank in (0, 1)
            ]
            outputs = [c.communicate()[0] for c in children]
            assert all(c.returncode == 0 for c in children), outputs
            print("".join(outputs))
            callback_without_current(7)
            raise RuntimeError("fail after the children saved, so the retry loads")
        self.loaded = sorted(os.listdir(current.checkpoint.directory))
        self.info_name = current.checkpoint.info.name
        self.listed = sorted(
            (r.name, r.metadata.get("i", r.metadata.get("step")), r.attempt)
            for r in current.checkpoint.list()
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SubprocessFlow()
