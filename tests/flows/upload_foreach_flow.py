"""Two ``@checkpoint(upload="end")`` tasks of a foreach running at once on one machine, sharing
one local tier (tests/integration/test_upload_policy.py).

Each saves ``SAVES`` times a directory with a ``shared.bin`` the same in both tasks (so their
saves deduplicate against each other's blobs in the tier) and an ``own.bin`` new per save;
``keep_last=2`` prunes the tier as they go.  Each task's end uploads its last save and cleans
the tier (its checkpoints, then the tier's unreferenced blobs) while the other may still save.
"""

import os
import random
import time

from metaflow import FlowSpec, checkpoint, current, step

SAVES = int(os.environ.get("SAVES", "12"))


class UploadForeachFlow(FlowSpec):
    @step
    def start(self):
        self.items = [0, 1]
        self.next(self.train, foreach="items")

    @checkpoint(upload="end", keep_last=2)
    @step
    def train(self):
        shared = random.Random(7).randbytes(3 << 20)
        d = current.checkpoint.directory
        keys = []
        for i in range(SAVES):
            with open(os.path.join(d, "shared.bin"), "wb") as f:
                f.write(shared)
            with open(os.path.join(d, "own.bin"), "wb") as f:
                f.write(random.Random(100 * self.input + i).randbytes(1 << 20))
            keys.append(current.checkpoint.save(metadata={"i": i}).key)
            time.sleep(0.05 * (1 + self.input))  # the two tasks end at different times
        self.last = keys[-1]
        self.next(self.join)

    @step
    def join(self, inputs):
        self.lasts = [i.last for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadForeachFlow()
