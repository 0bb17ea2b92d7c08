"""A cloud's preemption notice mid-step: the watcher interrupts the task as SIGTERM does, the
on_interrupt callback writes the final state, save_on_interrupt commits it, and the retry
starts from it.

The cloud comes from ``PREEMPTION_CLOUD`` (default ``aws``) and the metadata service from
``METAFLOW_CHECKPOINT_PREEMPTION_ENDPOINT`` (a fake on 127.0.0.1, see tests/fake_metadata.py);
the first attempt creates ``PREEMPTION_NOTICE_FILE``, which makes the fake announce a notice.
"""

import os
import time

from metaflow import FlowSpec, checkpoint, current, retry, step

CLOUD = os.environ.get("PREEMPTION_CLOUD", "aws")


def write(name, text):
    with open(os.path.join(current.checkpoint.directory, name), "w") as f:
        f.write(text)


class PreemptionFlow(FlowSpec):
    @checkpoint(preemption=CLOUD, save_on_interrupt=True)
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0:
            write("state.txt", "epoch 3")
            current.checkpoint.on_interrupt(lambda: write("state.txt", "preempted in epoch 4"))
            open(os.environ["PREEMPTION_NOTICE_FILE"], "w").close()  # the cloud announces
            time.sleep(120)  # the notice interrupts this
            raise AssertionError("not reached")
        with open(os.path.join(current.checkpoint.directory, "state.txt")) as f:
            self.loaded = f.read()
        self.listed = [
            [r.metadata.get("reason"), r.metadata.get("signal")]
            for r in current.checkpoint.list(attempt=0)
        ]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PreemptionFlow()
