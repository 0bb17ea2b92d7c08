"""Rank-0-only saves from a @parallel step (the usual ``if rank == 0: save()``): node 0 alone
saves each epoch, every node crashes once on attempt 0, and on the retry both nodes resume from
node 0's newest checkpoint; node 0 then saves the trained model under another name ("final").

``--sync`` is a directory both nodes see (local runs): after loading, the nodes meet at a
barrier, as training code does before its first collective, so node 0's next save cannot be
taken for the one node 1 resumed from.
"""

import os

from gang_sync import barrier
from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, retry, step

EPOCHS = 4
CRASH_AFTER = 1  # attempt 0 crashes after this epoch's save


class GangStepSavesFlow(FlowSpec):
    sync = Parameter("sync", required=True, help="A directory both nodes see.")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint
    @retry(times=1)
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        state = os.path.join(current.checkpoint.directory, "state.txt")
        self.node = node
        self.attempt = current.retry_count
        self.loaded_key = self.loaded_content = None
        first = 0
        if current.checkpoint.is_loaded:
            with open(state) as f:
                self.loaded_content = f.read()
            self.loaded_key = current.checkpoint.info.key
            first = int(self.loaded_content.rsplit(" ", 1)[1]) + 1
        barrier(os.path.join(self.sync, "attempt-%d" % self.attempt), node, 2)
        self.saved = []
        if current.retry_count == 0 and node == 1:
            raise RuntimeError("node 1 crashes before node 0 has saved anything")
        for epoch in range(first, EPOCHS):
            if node == 0:  # rank 0 alone saves
                with open(state, "w") as f:
                    f.write("node 0 epoch %d" % epoch)
                ref = current.checkpoint.save(metadata={"epoch": epoch})
                self.saved.append((ref.key, ref.get("writer")))
            if current.retry_count == 0 and epoch == CRASH_AFTER:
                raise RuntimeError("node %d crashes once after epoch %d" % (node, epoch))
        self.final = None
        if node == 0:
            with open(state, "w") as f:
                f.write("trained model")
            ref = current.checkpoint.save(name="final", metadata={"epochs": EPOCHS})
            self.final = (ref.key, ref.get("writer"))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.by_node = {
            i.node: {
                "attempt": i.attempt,
                "loaded_key": i.loaded_key,
                "loaded_content": i.loaded_content,
                "saved": i.saved,
                "final": i.final,
            }
            for i in inputs
        }
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GangStepSavesFlow()
