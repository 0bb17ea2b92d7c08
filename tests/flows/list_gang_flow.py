"""``list(task=<a @parallel worker>)`` (tests/integration/test_list_parity.py): each node of a
gang of two saves one checkpoint (metadata ``node``), stored under the control task, and lists
its own task by pathspec."""

import os

from metaflow import FlowSpec, checkpoint, current, parallel, step


class ListGangFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        with open(os.path.join(current.checkpoint.directory, "r"), "w") as f:
            f.write(str(node))
        current.checkpoint.save(name="p", metadata={"node": node})
        self.own_task = [
            c["metadata"]["node"] for c in current.checkpoint.list(task=current.pathspec)
        ]
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ListGangFlow()
