"""Two-node DistributedDataParallel training: ``@parallel`` + ``torchrun`` + ``@retry`` +
``@checkpoint``, where rank 0 alone saves.

Every node of the ``train`` step runs ``torchrun`` for itself (``--node_rank`` = its node index,
the rendezvous on node 0's address).  The workers (``train.py``) resume from
``Checkpoint().load("last")`` when a checkpoint exists, and RANK 0 alone saves the model and
optimizer after every epoch through ``Checkpoint(init_dir=True)``.  Such a save commits at once
and is the gang's checkpoint: on a retry both nodes and every worker load it.  After training,
node 0's step saves the trained model as the checkpoint ``final`` with
``current.checkpoint.save``.

    python examples/distributed/ddp_flow.py run
    python examples/distributed/ddp_flow.py run --crash_once true

With ``--crash_once true`` every worker raises once on the first attempt (after epoch 2's
checkpoint); ``@retry`` runs the gang again and both nodes resume from that checkpoint.  Locally
the nodes are processes on this machine (``torchrun`` and ``python`` from PATH); with
``@kubernetes`` or ``@batch`` each node is its own pod or instance.
"""

import json
import os
import subprocess
import tempfile

from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, retry, step

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


class DDPFlow(FlowSpec):
    nodes = Parameter("nodes", default=2, type=int, help="Nodes of the gang.")
    epochs = Parameter("epochs", default=5, type=int, help="Epochs to train.")
    master_port = Parameter("master_port", default=29500, type=int, help="Rendezvous port.")
    crash_once = Parameter(
        "crash_once", default=False, type=bool, help="Every worker raises once (attempt 0)."
    )

    @step
    def start(self):
        self.next(self.train, num_parallel=self.nodes)

    @checkpoint
    @retry(times=1)
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        self.node = node
        self.attempt = current.retry_count
        # On a retry every node starts with the gang's newest checkpoint (rank 0's) here too.
        self.resumed_from = current.checkpoint.info if current.checkpoint.is_loaded else None
        results, model_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
        cmd = [
            "torchrun",
            "--nnodes=%d" % current.parallel.num_nodes,
            "--nproc_per_node=1",
            "--node_rank=%d" % node,
            "--master_addr=%s" % current.parallel.main_ip,
            "--master_port=%d" % self.master_port,
            TRAIN,
            "--epochs=%d" % self.epochs,
            "--results-dir=%s" % results,
            "--model-dir=%s" % model_dir,
        ]
        if self.crash_once and current.retry_count == 0:
            cmd.append("--crash-after=2")
        subprocess.run(cmd, check=True)
        self.workers = {}
        for name in sorted(os.listdir(results)):
            with open(os.path.join(results, name)) as f:
                worker = json.load(f)
            self.workers[worker["rank"]] = worker
        self.final = None
        if node == 0:
            self.final = current.checkpoint.save(
                model_dir, name="final", metadata={"epochs": self.epochs}
            )
            print("Saved the trained model: %s" % self.final.key)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes_seen = {
            i.node: {"attempt": i.attempt, "resumed_from": i.resumed_from, "workers": i.workers}
            for i in inputs
        }
        self.final = next(i.final for i in inputs if i.node == 0)
        self.next(self.end)

    @step
    def end(self):
        print("Trained model: %s" % self.final.key)


if __name__ == "__main__":
    DDPFlow()
