"""A long training loop that checks for pause requests at every batch."""

import os
import time

from metaflow import FlowSpec, checkpoint, current, retry, step


class PauseFlow(FlowSpec):
    @checkpoint
    @retry(times=2)
    @step
    def start(self):
        state = os.path.join(current.checkpoint.directory, "batch.txt")
        first = 0
        if current.checkpoint.is_loaded:
            with open(state) as f:
                first = int(f.read())
        self.resumed_at = first
        with open("progress-%s.txt" % current.run_id, "w") as f:
            f.write("running")
        # The first attempt is slow so that a pause from the CLI arrives mid-loop; a resumed
        # one need not be (the test only needs it to start from the checkpoint and finish).
        delay = 0.0 if current.checkpoint.is_loaded else 0.05
        for batch in range(first, 600):
            time.sleep(delay)
            with open(state, "w") as f:
                f.write(str(batch + 1))
            if current.checkpoint.should_pause():
                current.checkpoint.save(metadata={"batch": batch + 1})
                current.checkpoint.pause(reason="asked from the CLI")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PauseFlow()
