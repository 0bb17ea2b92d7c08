"""A rank fails while node 0 waits in a sharded save: node 0 must stop at once with an error naming
node 1 and why, instead of waiting METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT for its part.  No @retry:
the run fails.

``GANG_SAVE_ON_FAILURE=1`` in the environment turns on ``@checkpoint(save_on_failure=True)``
(decorator attributes are fixed at import, so the variant is chosen there): node 1's failure save
is then a plain checkpoint of its own directory, and node 0 still stops naming node 1.
``--sync`` is a directory both nodes see (local runs): node 1 fails only once node 0 is saving.
"""

import os
import time

from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, step

SAVE_ON_FAILURE = os.environ.get("GANG_SAVE_ON_FAILURE") == "1"


class GangRankFailsFlow(FlowSpec):
    sync = Parameter("sync", required=True, help="A directory both nodes see.")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint(save_on_failure=SAVE_ON_FAILURE)
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        saving = os.path.join(self.sync, "node0-saving")
        with open(os.path.join(current.checkpoint.directory, "shard.txt"), "w") as f:
            f.write("node %d state" % node)
        if node == 1:
            deadline = time.time() + 120
            while not os.path.exists(saving) and time.time() < deadline:
                time.sleep(0.05)
            raise RuntimeError("node 1 ran out of memory")
        open(saving, "w").close()
        current.checkpoint.save(metadata={"epoch": 0}, sharded=True)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GangRankFailsFlow()
