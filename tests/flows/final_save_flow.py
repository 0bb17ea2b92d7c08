"""Final saves (save_on_failure / save_on_interrupt) never hide a newer checkpoint that a child
process saved while the managed directory stayed empty or unchanged.

``--case empty``: attempt 0 writes nothing into ``current.checkpoint.directory``; a child saves;
the attempt stops (``--how failure``: raises; ``--how interrupt``: SIGTERM).  Attempt 1 must
load the child's checkpoint.

``--case unchanged``: attempt 0 saves the directory itself and stops (its final save would
repeat that checkpoint); attempt 1 loads it, a child saves newer state, the attempt stops with
the directory still holding what was loaded.  Attempt 2 must load the child's checkpoint.
"""

import os
import signal
import subprocess
import sys
import time

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

CHILD = r"""
import os, sys
from metaflow import Checkpoint

with Checkpoint(init_dir=True) as ckpt:
    with open(os.path.join(ckpt.directory, "state.txt"), "w") as f:
        f.write(sys.argv[1])
    ckpt.save(metadata={"by": "child"})
"""


class FinalSaveFlow(FlowSpec):
    how = Parameter("how", default="failure", help="failure or interrupt")
    case = Parameter("case", default="empty", help="empty or unchanged")

    def stop(self):
        if self.how == "interrupt":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # the handler interrupts this
        raise RuntimeError("attempt %d stops here" % current.retry_count)

    @checkpoint(save_on_failure=True, save_on_interrupt=True)
    @retry(times=2)
    @step
    def start(self):
        attempt = current.retry_count
        directory = current.checkpoint.directory
        if attempt < (1 if self.case == "empty" else 2):
            if self.case == "unchanged" and attempt == 0:
                with open(os.path.join(directory, "state.txt"), "w") as f:
                    f.write("saved by the task in attempt 0")
                current.checkpoint.save(metadata={"by": "task"})
            else:
                text = "saved by a child in attempt %d" % attempt
                subprocess.run([sys.executable, "-c", CHILD, text], check=True)
            self.stop()
        self.files = sorted(os.listdir(directory))
        with open(os.path.join(directory, "state.txt")) as f:
            self.loaded = f.read()
        self.loaded_metadata = current.checkpoint.info.metadata
        self.saved = sorted(
            (r.attempt, r.metadata.get("by") or r.metadata.get("reason"))
            for r in current.checkpoint.list()
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FinalSaveFlow()
