"""A @parallel gang whose ranks save shards of one checkpoint (``save(sharded=True)`` on every
node), crash once, and resume each from its own shard; rank 0 can also load every rank's shard
(re-sharding)."""

import os
import tempfile

from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, retry, step

#: ``@checkpoint(upload=...)``: sharded saves commit to the flow's store either way.
UPLOAD = os.environ.get("MFCKPT_TEST_UPLOAD", "each")


class ParallelCkptFlow(FlowSpec):
    nodes = Parameter("nodes", default=2, type=int)

    @step
    def start(self):
        self.next(self.train, num_parallel=self.nodes)

    @checkpoint(upload=UPLOAD)
    @retry(times=1)
    @parallel
    @step
    def train(self):
        rank = current.parallel.node_index
        d = current.checkpoint.directory
        self.rank = rank
        if current.retry_count == 0:
            for epoch in range(2):
                with open(os.path.join(d, "shard.txt"), "w") as f:
                    f.write("rank %d epoch %d" % (rank, epoch))
                os.makedirs(os.path.join(d, "opt"), exist_ok=True)
                with open(os.path.join(d, "opt", "state.bin"), "wb") as f:
                    f.write(bytes([rank]) * (1000 * (rank + 1)))
                ref = current.checkpoint.save(metadata={"epoch": epoch}, sharded=True)
            self.first_key = ref.key
            if rank == current.parallel.num_nodes - 1:
                raise RuntimeError("the last rank crashes after the gang committed epoch 1")
        else:
            with open(os.path.join(d, "shard.txt")) as f:
                self.loaded = f.read()
            self.loaded_files = sorted(
                os.path.relpath(os.path.join(p, n), d) for p, _, ns in os.walk(d) for n in ns
            )
            self.info_key = current.checkpoint.info.key
            if rank == 0:
                every = current.checkpoint.load(
                    current.checkpoint.info,
                    path=tempfile.mkdtemp(),
                    all_ranks=True,
                )
                self.all_ranks = sorted(os.listdir(every))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.by_rank = {
            i.rank: (getattr(i, "loaded", None), getattr(i, "info_key", None)) for i in inputs
        }
        self.files_by_rank = {i.rank: getattr(i, "loaded_files", None) for i in inputs}
        self.all_ranks = next(i.all_ranks for i in inputs if i.rank == 0)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParallelCkptFlow()
