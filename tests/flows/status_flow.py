"""A task whose first attempt fails and whose retry pauses: its checkpoints are listed with
``task_status`` "failed" (attempt 0) and "paused" (attempt 1, never "failed")."""

import os

from metaflow import FlowSpec, checkpoint, current, retry, step


class StatusFlow(FlowSpec):
    @checkpoint
    @retry(times=1, minutes_between_retries=0)
    @step
    def start(self):
        path = os.path.join(current.checkpoint.directory, "state.txt")
        with open(path, "w") as f:
            f.write("attempt %d" % current.retry_count)
        current.checkpoint.save(metadata={"attempt_saved": current.retry_count})
        if current.retry_count == 0:
            raise RuntimeError("attempt 0 fails on purpose")
        current.checkpoint.pause(reason="paused on purpose")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    StatusFlow()
