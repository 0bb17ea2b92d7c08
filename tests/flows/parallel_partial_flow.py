"""A rank dies before its share of a gang save: rank 0 must not commit it, and the retry loads
the last checkpoint every rank completed."""

import os

from metaflow import FlowSpec, checkpoint, current, parallel, retry, step


class ParallelPartialFlow(FlowSpec):
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
                    os._exit(3)  # dies before its epoch-1 shard
                with open(os.path.join(d, "shard.txt"), "w") as f:
                    f.write("rank %d epoch %d" % (rank, epoch))
                current.checkpoint.save(metadata={"epoch": epoch})
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
