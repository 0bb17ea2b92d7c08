"""``TASKS`` (default 20) ``@checkpoint(upload="end")`` tasks of a foreach, each saving twice
and succeeding, all sharing one local tier (tests/integration/test_upload_policy.py)."""

import os

from metaflow import FlowSpec, checkpoint, current, step


class UploadManyFlow(FlowSpec):
    @step
    def start(self):
        self.items = list(range(int(os.environ.get("TASKS", "20"))))
        self.next(self.train, foreach="items")

    @checkpoint(upload="end")
    @step
    def train(self):
        for i in range(2):
            with open(os.path.join(current.checkpoint.directory, "w.txt"), "w") as f:
                f.write("task %d save %d" % (self.input, i))
            current.checkpoint.save()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadManyFlow()
