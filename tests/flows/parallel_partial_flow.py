"""Rank 1 stops before its share of a sharded save: rank 0 must not commit it, and the retry
loads the last checkpoint every rank completed.  ``--mode exit``: rank 1 vanishes without a
word (``os._exit``, as after SIGKILL), so rank 0 gives up after the timeout; ``--mode fail``:
rank 1's step raises, so it is marked gone and rank 0 stops at once, naming it."""

import os

from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, retry, step


class ParallelPartialFlow(FlowSpec):
    mode = Parameter("mode", default="exit")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint
    @retry(times=1)
    @parallel
    @step
    def train(self):
        rank = current.parallel.node_index
        d = current.checkpoint.directory
        self.rank = rank
        if current.retry_count == 0:
            for epoch in range(2):
                if epoch == 1 and rank == 1:
                    if self.mode == "exit":
                        os._exit(3)  # vanishes before its epoch-1 shard
                    raise RuntimeError("rank 1 fails before its epoch-1 shard")
                with open(os.path.join(d, "shard.txt"), "w") as f:
                    f.write("rank %d epoch %d" % (rank, epoch))
                current.checkpoint.save(metadata={"epoch": epoch}, sharded=True)
        with open(os.path.join(d, "shard.txt")) as f:
            self.loaded = f.read()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.loaded = {i.rank: i.loaded for i in inputs}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParallelPartialFlow()
