"""``@parallel`` gang of 2 with ``@checkpoint(upload=UPLOAD_MODE, upload_errors="warn")``
(tests/integration/test_upload_policy.py).

Node 0 (control) saves first and the flow's store refuses its writes (a StorageError, as after
the storage layer's retries); node 1 (worker) saves the same series 2 s later and uploads it.
Each node writes its checkpoint key and status into ``UPLOAD_NOTES/node-<i>``.
"""

import json
import os
import time

from metaflow import FlowSpec, checkpoint, current, parallel, step

MODE = os.environ.get("UPLOAD_MODE", "end")


def refuse_writes():
    """Every write to the flow's store fails from now on in this process."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    storage = current.checkpoint._saves.flow_store.storage

    def refuse(*args, **kwargs):
        raise StorageError(reason="injected: node 0's writes are refused")

    for method in ("put_bytes", "put_file", "ingest_range"):
        setattr(storage, method, refuse)


class UploadParallelWarnFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint(upload=MODE, upload_errors="warn")
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        if node == 0:
            refuse_writes()
        else:
            time.sleep(2)  # the worker's checkpoint is the newer one
        with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
            f.write("node %d" % node)
        ref = current.checkpoint.save()
        with open(os.path.join(os.environ["UPLOAD_NOTES"], "node-%d" % node), "w") as f:
            json.dump({"key": ref.key}, f)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadParallelWarnFlow()
