"""``@checkpoint(upload="end", upload_errors=UPLOAD_ERRORS)`` for
tests/integration/test_upload_policy.py: ``start`` saves once, writes ``SYNC/saved``, then
waits (up to 120 s) for ``SYNC/go`` before it ends, so the test can run another task's start
sweep, or remove the checkpoint from the tier, while this task is alive.  With no ``SYNC`` it
saves and ends at once.
"""

import os
import time

from metaflow import FlowSpec, checkpoint, current, step

SYNC = os.environ.get("SYNC")


class UploadSweepLiveFlow(FlowSpec):
    @checkpoint(upload="end", upload_errors=os.environ.get("UPLOAD_ERRORS", "fail"))
    @step
    def start(self):
        with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
            f.write("saved by %s" % current.run_id)
        self.key = current.checkpoint.save().key
        if SYNC:
            with open(os.path.join(SYNC, "saved"), "w") as f:
                f.write(self.key)
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(SYNC, "go")) and time.time() < deadline:
                time.sleep(0.1)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadSweepLiveFlow()
