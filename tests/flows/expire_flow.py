"""A task whose @checkpoint(expire_after_days=5) prunes checkpoints older than 5 days (by the
store's clock) after each save; the flow dates its own saves back to make them old."""

import os
import subprocess
import sys
import time

from metaflow import FlowSpec, checkpoint, current, step

DAY = 86400


def age(ref, days: float) -> None:
    """Date a checkpoint's manifest file ``days`` back from its own mtime (the store's clock,
    not this process's, which a test may shift)."""
    root = ref["root"][len("file://") :] if ref["root"].startswith("file://") else ref["root"]
    path = os.path.join(root, ref["key"])
    then = os.stat(path).st_mtime - days * DAY
    os.utime(path, (then, then))


#: A child process of the task (a torchrun worker): its saves follow the step's retention too.
CHILD = """
import os, sys
sys.path.insert(0, os.environ["EXPIRE_FLOW_DIR"])
from expire_flow import age
from metaflow import Checkpoint

keys = []
for i in range(3):
    with Checkpoint(init_dir=True) as ckpt:
        with open(os.path.join(ckpt.directory, "i.txt"), "w") as f:
            f.write(str(i))
        ref = ckpt.save(name="child", metadata={"i": i})
        keys.append(ref["key"])
        if i == 0:
            age(ref, 8)
print(" ".join(keys))
"""


class ExpireFlow(FlowSpec):
    @checkpoint(expire_after_days=5)
    @step
    def start(self):
        d = current.checkpoint.directory
        self.saved = []
        for i in range(4):
            with open(os.path.join(d, "i.txt"), "w") as f:
                f.write(str(i))
            ref = current.checkpoint.save(metadata={"i": i})
            self.saved.append(ref["key"])
            if i < 2:
                age(ref, 8)  # expired: the next save prunes it
        self.clock = time.time()
        self.left = sorted(r["key"] for r in current.checkpoint.list(name="mfchckpt"))
        env = dict(os.environ, EXPIRE_FLOW_DIR=os.path.dirname(os.path.abspath(__file__)))
        child = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
        )
        self.child_saved = child.stdout.split()
        self.child_left = sorted(r["key"] for r in current.checkpoint.list(name="child"))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ExpireFlow()
