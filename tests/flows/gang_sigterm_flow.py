"""SIGTERM during a gang wait: node 0 waits in a sharded save for node 1, which sleeps and never
saves; the test sends SIGTERM to node 0's task process (its pid is written to ``--pid-file``) and
node 0 must stop with the interrupt at once, not after METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT.

Node 1 sleeps until node 0's task process has ended (it may already have when node 1 starts):
the local runtime reads the gang's output until every node has closed it.
"""

import os
import time

from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, step


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (an ended one stays a zombie until the runtime reaps it)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class GangSigtermFlow(FlowSpec):
    pid_file = Parameter("pid_file", required=True, help="Where node 0 writes its pid.")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        if node == 1:
            deadline = time.time() + 300
            while not os.path.exists(self.pid_file) and time.time() < deadline:
                time.sleep(0.05)
            with open(self.pid_file) as f:
                node0 = int(f.read())
            while _running(node0) and time.time() < deadline:
                time.sleep(0.1)
            raise RuntimeError("node 1 stops: node 0 has ended")
        with open(os.path.join(current.checkpoint.directory, "shard.txt"), "w") as f:
            f.write("node 0 state")
        with open(self.pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(self.pid_file + ".tmp", self.pid_file)
        current.checkpoint.save(metadata={"epoch": 0}, sharded=True)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GangSigtermFlow()
