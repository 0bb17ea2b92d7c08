"""A step that saves once: run with ``METAFLOW_CHECKPOINT_*`` settings set, it shows they reach
the task (good values) or fail it at start with a named error (bad ones)."""

import os

from metaflow import FlowSpec, checkpoint, current, step


class SettingsFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
            f.write("saved")
        self.key = current.checkpoint.save().key
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SettingsFlow()
