"""A retry whose task's checkpoints cannot be listed must fail, not start from scratch.

Attempt 0 saves, then makes its task's manifests directory unreadable and fails; attempt 1's
load policy must then fail with the storage error.  The directory is replaced by a symlink to
itself (every read fails with ELOOP), which holds for root too, unlike a chmod.
"""

import os

from metaflow import FlowSpec, checkpoint, current, retry, step


class UnreadableRetryFlow(FlowSpec):
    @checkpoint
    @retry(times=1, minutes_between_retries=0)
    @step
    def start(self):
        if current.retry_count == 0:
            with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
                f.write("epoch 3")
            ref = current.checkpoint.save()
            task_dir = os.path.dirname(ref.url)  # this task's manifests directory
            os.rename(task_dir, task_dir + ".moved")
            os.symlink(os.path.basename(task_dir), task_dir)
            raise RuntimeError("attempt 0 fails after saving")
        print("attempt 1 started, loaded=%s" % current.checkpoint.is_loaded)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UnreadableRetryFlow()
